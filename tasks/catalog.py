"""Task names. Targets are imported only when a task is built."""

from harness.registry import TASKS

TASKS.register("enwik8", "tasks.bytelevel:build_enwik8", aliases=("enwik-8",),
               summary="Hutter-prize enwik8, bits per byte (90M/5M/5M split)")
TASKS.register("bytes", "tasks.bytelevel:build_bytes", aliases=("text-bytes", "local-bytes"),
               summary="bits per byte on any local text (--data-file), split 90/5/5")
TASKS.register("wikitext103", "tasks.wikitext:build_wikitext103", aliases=("wikitext-103", "wt103"),
               summary="WikiText-103 word/byte/token perplexity, lm-eval-style article scoring (HF or --data-dir)")
TASKS.register("wikitext2", "tasks.wikitext:build_wikitext2", aliases=("wikitext-2", "wt2"),
               summary="WikiText-2, same as wikitext103 (small; files: harness data fetch wikitext-2-raw)")
TASKS.register("babilong", "tasks.babilong.task:build", aliases=("babi-long",),
               summary="BABILong qa1-qa5: bAbI facts in long background text, accuracy by task and length")
TASKS.register("mqar", "tasks.recall:build", aliases=("multi-query-associative-recall", "recall", "zoology"),
               summary="multi-query associative recall (Zoology) with MAD's noisy/fuzzy variants, accuracy per cell")
TASKS.register("needle", "tasks.needle:build", aliases=("niah", "needle-in-a-haystack", "ruler"),
               summary="RULER-style key-value needles in filler: trained short, scored at 1k-128k by streaming")
TASKS.register("selective-copy", "tasks.recall:build_selective_copy", aliases=("selective-copying", "mad-copy"),
               summary="MAD selective copying: content tokens among blanks, copied in order after a marker")
