"""BABILong (qa1..qa5) for the harness.

    harness eval --model titans-mac --task babilong --preset tiny --task-arg protocol=curriculum  # the main job
    harness eval --model titans-mac --task babilong --preset tiny                          # built-in generator
    harness eval --model titans-mac --task babilong --preset tiny --data-dir ../shared/data  # builder (bAbI + PG19)
    --task-arg source=auto|hf|builder|generator  tasks=qa1,qa2  lengths=0k,1k,4k,128k  samples=100  long_samples=25
    --task-arg train_length=0k  seed=0  scoring=choice|generate  tokenizer=words|phrases|bytes|gpt2  segment_len=N
    --task-arg eval_batch=16  pack=1  loss=answer|all  extra_questions=3  curve_samples=20  curriculum=qa1:600
    --task-arg protocol=standard|curriculum  budget=main|long

Modules: common.py (sample record, length names, labels, prompt), babi.py (bAbI files), builder.py (samples from
bAbI + books, GPT-2 token lengths), generator.py (no files), sources.py (Hugging Face datasets, source choice),
scoring.py (the benchmark's answer rule), streaming.py (segment-by-segment scoring, batched), words.py (the
word-level vocabulary), training.py (extra questions for training rows), protocols.py (named protocols: option
defaults and the model settings each architecture gets), task.py (the Task), plot.py.
"""
