"""Task names. Targets are imported only when a task is built."""

from harness.registry import TASKS

TASKS.register("enwik8", "tasks.bytelevel:build_enwik8", aliases=("enwik-8",),
               summary="Hutter-prize enwik8, bits per byte (90M/5M/5M split)")
TASKS.register("bytes", "tasks.bytelevel:build_bytes", aliases=("text-bytes", "local-bytes"),
               summary="bits per byte on any local text (--data-file), split 90/5/5")
TASKS.register("wikitext103", "tasks.wikitext:build_wikitext103", aliases=("wikitext-103", "wt103"),
               summary="WikiText-103 word/byte/token perplexity, lm-eval-style article scoring (HF or --data-dir)")
TASKS.register("wikitext2", "tasks.wikitext:build_wikitext2", aliases=("wikitext-2", "wt2"),
               summary="WikiText-2, same as wikitext103 (small; offline: valid/test in ../shared/data/wikitext-2)")
TASKS.register("babilong", "tasks.babilong.task:build", aliases=("babi-long",),
               summary="BABILong qa1-qa5: bAbI facts in long background text, accuracy by task and length")
