"""BABILong (qa1..qa5) for the harness.

    harness eval --model titans-mac --task babilong --preset tiny                          # built-in generator
    harness eval --model titans-mac --task babilong --preset tiny --data-dir ../shared/data  # builder (bAbI + PG19)
    --task-arg source=auto|hf|builder|generator  tasks=qa1,qa2  lengths=0k,1k,4k,128k  samples=100  long_samples=25
    --task-arg train_length=0k  seed=0  scoring=choice|generate  tokenizer=words|bytes|gpt2  segment_len=N
    --task-arg eval_batch=16  pack=1  loss=answer|all  extra_questions=3  curve_samples=20

Modules: common.py (sample record, length names, labels, prompt), babi.py (bAbI files), builder.py (samples from
bAbI + books, GPT-2 token lengths), generator.py (no files), sources.py (Hugging Face datasets, source choice),
scoring.py (the benchmark's answer rule), streaming.py (segment-by-segment scoring, batched), words.py (the
word-level vocabulary), training.py (extra questions for training rows), task.py (the Task), plot.py.
"""
