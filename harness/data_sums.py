"""Known sha256 and sizes of the catalog's files (harness/data_catalog.py), one "sha256 bytes path" per line, path
relative to a data root. They are the checksums of the copies in the CI data folder (../shared/data, whose
README names each file's public source), checked there with `sha256sum -c`; the GPT-2 pair equals the hashes
tiktoken pins for OpenAI's files. bAbI en-10k qa3 train is absent from that folder, so it has no entry."""

SUMS = """
fde8f20ed0b3ba979058ed391a566af34653f23baab5b2793ee37f87ef4e88b7     99632 babi/en-10k/qa10_indefinite-knowledge_test.txt
c5c0788b0446095c07a0442784cad2b59c1d58e875ebe8ad852f5e3f628613f4    997635 babi/en-10k/qa10_indefinite-knowledge_train.txt
46f3290d0158ce1285a40cd2d793f5a65f86ae5000226e165cbc85a3dfeb2f6f    104800 babi/en-10k/qa11_basic-coreference_test.txt
edfcd97fecd4a5045af25e1790cf1408856ae362c39521b1b69cd32b88ec0ced   1046139 babi/en-10k/qa11_basic-coreference_train.txt
6437718f8f9801ce345869e910b896836cdc6fd2d01dc7b4d2df49730703b4b1    114489 babi/en-10k/qa12_conjunction_test.txt
39d58df3564916c66cebc98befb65d605c032181e51208730fd8837a77bc166a   1144705 babi/en-10k/qa12_conjunction_train.txt
76a25b684f23c9cc473d8cd1465506168b9a1ec8891cfc59d0bbd87e6a064990    116444 babi/en-10k/qa13_compound-coreference_test.txt
c530fdf122d26617a8a03ba5cdbacee87c22624ba7f50d1f07f9658c900e22d8   1163109 babi/en-10k/qa13_compound-coreference_train.txt
e3f0b19858ffbec3ed1e49076cc4d1295a89ce146c50318b862f13f202b3caf2    151420 babi/en-10k/qa14_time-reasoning_test.txt
c322e0814eef71f088af1aa1334e7ae4b1ee6ca18f2ee94c05e2189226964ed6   1506583 babi/en-10k/qa14_time-reasoning_train.txt
32b77e117fe9acf5f94906684e3b5206de0108e646c76e1da3e022896ec7ee94     87769 babi/en-10k/qa15_basic-deduction_test.txt
0a86673f7fafa484f8ee394048f03de19405bdc40b58f21086969efad2862010    877358 babi/en-10k/qa15_basic-deduction_train.txt
4a11e55366f2a5a859b5a81f683ee23801bdbe71ef984e51adb976bd053e8dcf    208208 babi/en-10k/qa16_basic-induction_test.txt
27fef347ce0b25dd148efea2b15f154926e0e9069d4ea6ab9cfca3add492ab35   2082804 babi/en-10k/qa16_basic-induction_train.txt
9e1e0250ed4ec1831757fab26c04138f81ea557ebf6976a220db879cbed04bac     68578 babi/en-10k/qa17_positional-reasoning_test.txt
8a383651e009db50d6c9effed5778b8646c28c55fadb1592b5f4d8d3a187bbce    684293 babi/en-10k/qa17_positional-reasoning_train.txt
d34f70eb7228a276fcb3a7854174fe562c5634f4fb454a39fc3d1ad9934be3ef    103626 babi/en-10k/qa18_size-reasoning_test.txt
9e7c15107067d2070170ef12579a8bfe34dfc35a7ac9ebd13f2001dc1a7488f9   1058260 babi/en-10k/qa18_size-reasoning_train.txt
023e391f0d7f79c9e6ae1c46c093e2d0dbd50ab8fbd8965e037a75e3614c20e5    247449 babi/en-10k/qa19_path-finding_test.txt
6cfdc6f448e3cf0e3d8a390fa3add461935b033f89ede32aeef30812401ec91e   2475046 babi/en-10k/qa19_path-finding_train.txt
55acf66cef2f6d798e2aa1d056e1ec8f24e910ea9215b639450574321132959b     94477 babi/en-10k/qa1_single-supporting-fact_test.txt
749ea9f7c99070feb2d88c975a254417a0dcc8274add4435ae5ae24c7afc7e9d    944248 babi/en-10k/qa1_single-supporting-fact_train.txt
bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729     67963 babi/en-10k/qa20_agents-motivations_test.txt
36f20f3baf6bad2297d5b9fd877e633550c36106fe78bc10ddfb7b1eede62573    678651 babi/en-10k/qa20_agents-motivations_train.txt
eff93fb9cd81ba02eb765772cf7cc269769ed44ec71cbbbc19cfb16ee5eba0f6    179835 babi/en-10k/qa2_two-supporting-facts_test.txt
d4074c0c5d54f70ce2f538056ce2b6ef6a313da336da4245f1a24f1298e37ef3   1794716 babi/en-10k/qa2_two-supporting-facts_train.txt
17795c977100baf8188f386522ae301b62d6c1a13efc01b3aea781e588b4d57f    526527 babi/en-10k/qa3_three-supporting-facts_test.txt
07f0ca18ddeea9eed4ba6d59e162adcb0ce44815721114b3540d92825509331e    117394 babi/en-10k/qa4_two-arg-relations_test.txt
5d11b821d35234988ab907866aa7ce718e6b6d751acf63bdef52262afb59f12c   1175065 babi/en-10k/qa4_two-arg-relations_train.txt
ec825c1c8a76e63a31f0d7a7763cd63740e98332fa9bdf246a19068949bd5f97    207037 babi/en-10k/qa5_three-arg-relations_test.txt
2506910935b701bac64fc8b1d7ff12bd8d0f47ceefca183454282bec784c12a5   2122413 babi/en-10k/qa5_three-arg-relations_train.txt
b108b16f1eccbd1c24df6dca2649079a7b2f10af7fd12d4c45a3393802de59e3    100109 babi/en-10k/qa6_yes-no-questions_test.txt
602f379184bf3cb59660d0f7769d9c94ccdc1fc4d82dfe90bd460d985b1ff0c5   1003212 babi/en-10k/qa6_yes-no-questions_train.txt
a74d1f2b91329b2bae814d41cdac2fbdfdf0328562b7d8afa9a0fa576d461e27    130136 babi/en-10k/qa7_counting_test.txt
4a2508733bef9b38cfce4b3108a91b83cdee378de4a7370e4d32fea2dacd3b7d   1345275 babi/en-10k/qa7_counting_train.txt
362a653c821a580fa315a85243b4f03bfa06fa7e0269b6f8e596f8fe6911646a    126863 babi/en-10k/qa8_lists-sets_test.txt
9518da2d3aa5d98bec33335e0d5ba3a22c2bd1929ee679085d37eb50a7652e4a   1256367 babi/en-10k/qa8_lists-sets_train.txt
63590aff3f89993db409f0e9a9eb39c2a5b9d5efff99b255d800a891b0044d9f     97208 babi/en-10k/qa9_simple-negation_test.txt
5f8949f6ef7d64516fc4dd5732b12b5932d057b1a614e8ac94e795fb020d4ff0    971173 babi/en-10k/qa9_simple-negation_train.txt
fde8f20ed0b3ba979058ed391a566af34653f23baab5b2793ee37f87ef4e88b7     99632 babi/en/qa10_indefinite-knowledge_test.txt
0b7691689447bab05476c5b48c44999b41e747c3978df69c18fdd87b60d6e8b3     99217 babi/en/qa10_indefinite-knowledge_train.txt
46f3290d0158ce1285a40cd2d793f5a65f86ae5000226e165cbc85a3dfeb2f6f    104800 babi/en/qa11_basic-coreference_test.txt
9468de9a1f256f43dfda693a5d07182d21149a82b65f7c2451c64e9cff5eb138    104520 babi/en/qa11_basic-coreference_train.txt
6437718f8f9801ce345869e910b896836cdc6fd2d01dc7b4d2df49730703b4b1    114489 babi/en/qa12_conjunction_test.txt
45c2764bb2d3c8f699d35e9d9aa7958fcd96379c6e907116cdf74526c108bb25    114560 babi/en/qa12_conjunction_train.txt
76a25b684f23c9cc473d8cd1465506168b9a1ec8891cfc59d0bbd87e6a064990    116444 babi/en/qa13_compound-coreference_test.txt
533a391edbda743e4c99504de88b40cdded5b1d5ef454d1390f0863f748a4cc9    116516 babi/en/qa13_compound-coreference_train.txt
e3f0b19858ffbec3ed1e49076cc4d1295a89ce146c50318b862f13f202b3caf2    151420 babi/en/qa14_time-reasoning_test.txt
b7561cbc624205c9c2fdbb8c843cfa8ad90edd65e78bb223fc6dea8113662df8    152131 babi/en/qa14_time-reasoning_train.txt
32b77e117fe9acf5f94906684e3b5206de0108e646c76e1da3e022896ec7ee94     87769 babi/en/qa15_basic-deduction_test.txt
e856ebfdcce4dd7d617c1d10f985e96a0850c0ca18e9a19a017cb710d135ed3d     87688 babi/en/qa15_basic-deduction_train.txt
4a11e55366f2a5a859b5a81f683ee23801bdbe71ef984e51adb976bd053e8dcf    208208 babi/en/qa16_basic-induction_test.txt
20121005137e3d4b061a086eb177a456303d5742b764eb8da2d0e480b6af4d28    208334 babi/en/qa16_basic-induction_train.txt
9e1e0250ed4ec1831757fab26c04138f81ea557ebf6976a220db879cbed04bac     68578 babi/en/qa17_positional-reasoning_test.txt
20083bf56ff74f0e7cf5e3e2f8c3905cdb8ef09293c3e8cf7a96ed8b45ae2277     68596 babi/en/qa17_positional-reasoning_train.txt
d34f70eb7228a276fcb3a7854174fe562c5634f4fb454a39fc3d1ad9934be3ef    103626 babi/en/qa18_size-reasoning_test.txt
18b7dcf52c9a0e87e4e7dd3d65b7e5a630de039645f52a1294197af7481d739d    104815 babi/en/qa18_size-reasoning_train.txt
023e391f0d7f79c9e6ae1c46c093e2d0dbd50ab8fbd8965e037a75e3614c20e5    247449 babi/en/qa19_path-finding_test.txt
dcb788352a56effb7bea1449128f31cc9c342c8c327b6df2caeee0e379e6ad3a    247496 babi/en/qa19_path-finding_train.txt
55acf66cef2f6d798e2aa1d056e1ec8f24e910ea9215b639450574321132959b     94477 babi/en/qa1_single-supporting-fact_test.txt
c64ba9b1a49bbb111ffc4cd2ae4f129d25c012399dd7ade9679eea464b9afb05     94346 babi/en/qa1_single-supporting-fact_train.txt
bd3bde3788ac14ba0ae095078f7b820fbd2bfa6a34dba9d1d46a34afde9c2729     67963 babi/en/qa20_agents-motivations_test.txt
29580ad55fb7b4b29ba014696056cc68f8f347dac3be88470fd692ad60150398     67892 babi/en/qa20_agents-motivations_train.txt
eff93fb9cd81ba02eb765772cf7cc269769ed44ec71cbbbc19cfb16ee5eba0f6    179835 babi/en/qa2_two-supporting-facts_test.txt
a4978af5bc0dc30191810e7c9949aaa6eae939ed0f6beb9fcb5f4330c2a27860    177412 babi/en/qa2_two-supporting-facts_train.txt
17795c977100baf8188f386522ae301b62d6c1a13efc01b3aea781e588b4d57f    526527 babi/en/qa3_three-supporting-facts_test.txt
a6e78019f36a02a7ed71fe6aaded0b563ff09c8deec392931801fcd9c6af4d60    529204 babi/en/qa3_three-supporting-facts_train.txt
07f0ca18ddeea9eed4ba6d59e162adcb0ce44815721114b3540d92825509331e    117394 babi/en/qa4_two-arg-relations_test.txt
c9370502d85fa382f32d1fea2111e817f81ae9e3e79eb2924a1a5392a90417fa    117470 babi/en/qa4_two-arg-relations_train.txt
ec825c1c8a76e63a31f0d7a7763cd63740e98332fa9bdf246a19068949bd5f97    207037 babi/en/qa5_three-arg-relations_test.txt
086cd59c3ca9677bfac3d6a22ca5853c76a5c1fbae3159c7c4a6aef759a74ec0    199473 babi/en/qa5_three-arg-relations_train.txt
b108b16f1eccbd1c24df6dca2649079a7b2f10af7fd12d4c45a3393802de59e3    100109 babi/en/qa6_yes-no-questions_test.txt
5a133115ee35d475776df703ff605d145b11effbcdbf7e74861f9d5639246a5a    100561 babi/en/qa6_yes-no-questions_train.txt
a74d1f2b91329b2bae814d41cdac2fbdfdf0328562b7d8afa9a0fa576d461e27    130136 babi/en/qa7_counting_test.txt
dca03bd91876951c49f1c971c83c9dd55404de60201b7b6435451cf7ddb4751c    135895 babi/en/qa7_counting_train.txt
362a653c821a580fa315a85243b4f03bfa06fa7e0269b6f8e596f8fe6911646a    126863 babi/en/qa8_lists-sets_test.txt
058604df6f9440458317e8ae685d2b7b84261e1a80b4d6410a9140d16f81bf06    124487 babi/en/qa8_lists-sets_train.txt
63590aff3f89993db409f0e9a9eb39c2a5b9d5efff99b255d800a891b0044d9f     97208 babi/en/qa9_simple-negation_test.txt
0c3b89921af0caea1c4059ee3f7b7f2a88869f924195a428da37820446b8c49f     97310 babi/en/qa9_simple-negation_train.txt
c96fdc31e1561e3432803305b1b40d12bc008b377bcacd455e063af8291f47f2    306904 pg19/10002.txt
badf5df144aa17d538a229ace9bc45638e6bc3b61986a8227141b7d0d8f2c112    514576 pg19/10046.txt
5d02784cc30223db4adeaa2f80e7890f3e8efed2a486acfc55e2028800c7ad54    381321 pg19/10084.txt
b371184f9fcee5b952fe1f64baa5d02a716dacab0c641630b8833d32f8a37377    280763 pg19/10093.txt
4c3134f0f389e31b2e8cb3c63a8b0e27d4a28924812e414865adb9212a0ab3e4    634323 pg19/10132.txt
c147225ac52a9f97359e8475316759df5e93fd5af3dc611e927430b0fc1d8fe6    275088 pg19/10146.txt
ad4301bd3dc100207cce28536e6d24ff455a22822bcdd50ef25eb9df34eb4591    622529 pg19/10148.txt
2bace068ed77329087e46473a13da53c918401cdddbbae4cfea9bd596e41dc88    495038 pg19/10226.txt
5b0f0633b56d4d071b6eb2d87061523e2ad3d6a11128fded5383294b17c67a4a    418642 pg19/10234.txt
386b1127da2afd283175e27af5ccf6a248c8358552e91c3c461ad75fc850bb16    346201 pg19/10321.txt
e8e1ffad3c20301f45f8ce1b2e21285d93bb8dbe01d15299b1bd7e47d043d662    435729 pg19/10342.txt
a1ed2f36a59d108bdab60dc884767937afc7c9a502752ab2ba20f162643d9395    332408 pg19/10355.txt
dc1cafa5a0781236368b32c42ff98d4e3b18ce68b379302ad4d07fa898ae8683    336234 pg19/10356.txt
01a180c812818ff03e6d59ed7995473f574e6787882a7d616a154d253e57376d    451602 pg19/10360.txt
d2c583d22422d6a3c061895d8e976f78b0aa998e3fc9fc4f87f2192f5028feee    832345 pg19/10363.txt
6e3ac4e0a3eed30b2c0f0786293087caeb09efcb6808eb64102bf47e10088ec3    580923 pg19/10364.txt
46179df1d2200df708b563bcf802bccf2ac68f4b1f974f4a00be55629c08a735    294118 pg19/10377.txt
cb07d19ef0dee97cb58dd642f62bb70ad83778dcbb2b0ef9f21b489e623331e6    373136 pg19/10418.txt
78e1af370bec7bf61cab53a907cfc2f94baabc69f1a5de5604df4cd3778b4a50    308605 pg19/10441.txt
2417f8dd6c40aa7b2ba1bfe44772aafec3cfb31bc9a501f66592d4746b6fbf4e    367368 pg19/10762.txt
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783   1042301 tokenizers/gpt2/encoder.json
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5    456318 tokenizers/gpt2/vocab.bpe
"""


def known() -> dict[str, tuple[str, int]]:
    """path -> (sha256, size)."""
    table = {}
    for line in SUMS.strip().splitlines():
        digest, size, path = line.split()
        table[path] = (digest, int(size))
    return table
