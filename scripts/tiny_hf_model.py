"""A small, randomly initialised Hugging Face model (Llama or Mamba-2 architecture) and its tokenizer, written with
save_pretrained, to try `--model hf:FOLDER` offline (the tests use the same functions):

    python scripts/tiny_hf_model.py /tmp/tiny-llama --kind llama
    harness eval --model hf:/tmp/tiny-llama --task babilong --steps 200 --task-arg tasks=qa1

The tokenizer is word-level over the bAbI words (tasks/babilong/words.py) and the prompt frame, with an unknown
token for every other word and a BOS token it adds itself, built with the `tokenizers` library, so nothing is
downloaded. `--chat` adds a chat template.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.babilong.words import BABI_WORDS


def save_word_tokenizer(folder: Path, chat: bool = False):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "<s>", "</s>", "<context>", "</context>", "\n", ",", "’", "'", *BABI_WORDS]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.add_tokens([AddedToken(t, normalized=False) for t in ("<context>", "</context>", "\n")])
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    if chat:
        tok.chat_template = "{% for m in messages %}<s> {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Answer :{% endif %}"
    tok.save_pretrained(folder)
    return tok


def save_tiny_model(folder: Path, kind: str = "llama", chat: bool = False, seed: int = 0) -> Path:
    """A randomly initialised `kind` ("llama" or "mamba2") model and its tokenizer in `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM

    folder = Path(folder)
    tok = save_word_tokenizer(folder, chat=chat)
    torch.manual_seed(seed)
    if kind == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(config)
    elif kind == "mamba2":
        config = Mamba2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, expand=2, num_heads=4,
                              head_dim=16, state_size=16, n_groups=1, conv_kernel=4, chunk_size=16,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
        model = Mamba2ForCausalLM(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--kind", choices=("llama", "mamba2"), default="llama")
    parser.add_argument("--chat", action="store_true", help="give the tokenizer a chat template")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = save_tiny_model(args.folder, args.kind, chat=args.chat, seed=args.seed)
    print(f"{args.kind} model and tokenizer -> {folder} (use --model hf:{folder})")


if __name__ == "__main__":
    main()
