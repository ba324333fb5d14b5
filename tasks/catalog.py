"""Task names. Targets are imported only when a task is built."""

from harness.registry import TASKS

TASKS.register("enwik8", "tasks.bytelevel:build_enwik8", aliases=("enwik-8",),
               summary="Hutter-prize enwik8, bits per byte (90M/5M/5M split)")
TASKS.register("bytes", "tasks.bytelevel:build_bytes", aliases=("text-bytes", "local-bytes"),
               summary="bits per byte on any local text (--data-file), split 90/5/5")
TASKS.register("babilong", "tasks.babilong.task:build", aliases=("babi-long",),
               summary="BABILong qa1-qa5: bAbI facts in long background text, accuracy by task and length")
