"""Named BABILong fine-tuning protocols (`--task-arg protocol=...`): the defaults of the task options that decide
what a small model learns, and the model settings the protocol gives each architecture. Every field is a default:
a `--task-arg` or `--model-arg` given on the command line wins, and the run record states what was used
(task_info.protocol, the record's model_args and a note).

- standard: word tokens, every task from the first step, every model as registered (the benchmark's plain form).
- curriculum: the protocol under which Titans-MAC learns qa1 at the main job's budget on 2 CPU cores
  (docs/babilong.md has the runs that chose each field):
  * movement phrases as single tokens (`tokenizer=phrases`), so "moved to the" is one fact token;
  * a qa1 curriculum: the first 600 steps draw qa1 rows alone, then every task (qa1's "where is X now" is the
    delta-rule overwrite the memory has to learn first; in the mix it is a fifth of the rows and the memory
    stays on the plateau of "one of the person's places");
  * the Titans memories as a matrix memory with inner steps in the delta rule's range: memory_depth=1,
    theta_max=0.5 (a write strength 2θ up to 1), no momentum, no inner-gradient cap, and chunks of 2 tokens (a
    chunk's step along a shared key is at most 2 x chunk_size x theta_max = 2, the stable limit; chunks of 4
    overflowed to NaN within ~2k tokens); Titans-MAC also takes segments of 16 tokens, so its attention sees less
    and its memory answers more. Other models keep their registered settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError

# A Titans memory in the delta rule's range with a stable chunk step (see the module docstring); strings, as
# `--model-arg` gives them, so a record is the same whichever way a setting arrived
DELTA_RANGE_MEMORY = {"memory_depth": "1", "theta_max": "0.5", "momentum": "false", "inner_grad_clip": "null",
                      "chunk_size": "2"}


@dataclass(frozen=True)
class Protocol:
    tokenizer: str  # the `tokenizer` option's default
    curriculum: str | None  # the `curriculum` option's default (TASKS:STEPS; None: every task from step 0)
    model_settings: dict[str, dict[str, str]] = field(default_factory=dict)  # registry name -> --model-arg defaults
    summary: str = ""  # one line for the record


PROTOCOLS = {
    "standard": Protocol(tokenizer="words", curriculum=None,
                         summary="word tokens, every task from the first step, models as registered"),
    "curriculum": Protocol(
        tokenizer="phrases", curriculum="qa1:600",
        model_settings={"titans-mac": {**DELTA_RANGE_MEMORY, "segment": "16"}, "titans-mag": DELTA_RANGE_MEMORY,
                        "titans-mal": DELTA_RANGE_MEMORY, "titans-lmm": DELTA_RANGE_MEMORY},
        summary="phrase tokens, qa1 alone for the first 600 steps, Titans memories as a delta-rule-range matrix "
                "memory with chunks of 2 (MAC: segments of 16)"),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise HarnessError(f"BABILong protocol {name!r} is not one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
