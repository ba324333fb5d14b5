"""Scoring one sample with a model, segment by segment, so memory stays bounded at any sample length.

The prompt is fed in segments of `seg_len` tokens carrying the model's streaming state (`model(ids, state=...)`,
harness/adapter.py); the logits after the last prompt token and the final state then score each candidate
answer from a copy of that state (the model may update its state in place, so each candidate gets a deep copy).

- choice scoring: log p(candidate | prompt) = sum over the candidate's tokens of log-softmax logits; the answer
  is the label with the highest log-likelihood (ties: the first label in the task's label order).
- generation: greedy decoding of up to `max_new_tokens` tokens, fed one token at a time with the state; the text
  is then judged by the benchmark's rule (scoring.compare_answers).

Batched form (models with streaming "state" or "window" and `batched_state`, harness/adapter.py): `stream_prompts` feeds
several prompts in lockstep, all from stream position 0 and sorted by length, in calls of at most `seg_len` tokens
cut on the seg_len grid and at every prompt's end; a prompt that ends hands over its last log-probs and its row of
the state and leaves the batch. `score_candidates` then scores all candidates of one prompt in one call: the state
repeated once per candidate, the candidates right-padded (after the real tokens, so a causal model's scores of the
real tokens do not see the padding), the log-probs of the real tokens summed. Exact-streaming models give the same
outputs wherever a stream is cut, so the batched scores equal the per-sample ones up to float rounding (tests check
every registered state-streaming model). Window models give the same outputs while a stream fits their window.
Past it, those whose state is a key/value cache (transformer-pp and moe by default) still do: which tokens a token
attends to depends only on its position. The token-tail form (harness/adapter.py WindowStreaming, `kv_cache=False`)
re-reads strides that start at each cut, so there a sample longer than the window may score slightly differently
than on the one-sample path (each token still sees at least half a window of context). With a key/value cache a
call costs only its new tokens: the prompt is read once and the candidates are one short call after it.

`score_choices_full` is the one-call reference (the whole prompt + candidate in one forward); tests check that
the streamed scores equal it.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from harness.adapter import state_batch_size, state_rows
from harness.errors import StreamingUnsupported


@torch.no_grad()
def stream_prompt(model, prompt_ids: Sequence[int], seg_len: int, device) -> tuple[torch.Tensor, object, int]:
    """(log-probs after the last prompt token [V], state, longest segment fed) for a prompt fed in segments."""
    if model.streaming == "none":
        raise StreamingUnsupported(f"{type(model).__name__} cannot stream (streaming='none')")
    ids = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=device)
    state, last, longest = None, None, 0
    for start in range(0, ids.numel(), seg_len):
        piece = ids[start:start + seg_len].unsqueeze(0)
        logits, _, state = model(piece, state=state)
        last = logits[0, -1]
        longest = max(longest, piece.shape[1])
    return F.log_softmax(last.double(), dim=-1), state, longest


@torch.no_grad()
def continuation_logprob(model, first_logprobs: torch.Tensor, state, cand_ids: Sequence[int], device) -> float:
    total = float(first_logprobs[cand_ids[0]])
    if len(cand_ids) > 1:
        ids = torch.as_tensor(list(cand_ids), dtype=torch.long, device=device).unsqueeze(0)
        logits, _, _ = model(ids[:, :-1], state=copy.deepcopy(state))
        logprobs = F.log_softmax(logits[0].double(), dim=-1)
        total += float(logprobs.gather(1, ids[0, 1:, None]).sum())
    return total


@torch.no_grad()
def score_choices_streaming(model, prompt_ids, candidates: Sequence[Sequence[int]], seg_len: int, device):
    """(log-likelihood of each candidate, longest segment fed)."""
    first, state, longest = stream_prompt(model, prompt_ids, seg_len, device)
    return [continuation_logprob(model, first, state, c, device) for c in candidates], longest


@torch.no_grad()
def score_choices_full(model, prompt_ids, candidates: Sequence[Sequence[int]], device) -> list[float]:
    """Reference: each candidate scored with one forward over prompt + candidate (no state)."""
    scores = []
    for cand in candidates:
        ids = torch.as_tensor(list(prompt_ids) + list(cand), dtype=torch.long, device=device).unsqueeze(0)
        logits, _ = model(ids[:, :-1])
        logprobs = F.log_softmax(logits[0, len(prompt_ids) - 1:].double(), dim=-1)
        scores.append(float(logprobs.gather(1, ids[0, len(prompt_ids):, None]).sum()))
    return scores


# -- batches of streams -----------------------------------------------------------------------------------------

def select_state(model, state, rows):
    """Rows `rows` of a batched state (the model's own select_state when it has one)."""
    if hasattr(model, "select_state"):
        return model.select_state(state, rows)
    return state_rows(state, torch.as_tensor(rows, dtype=torch.long).reshape(-1))


def repeat_state(model, state, n: int):
    """Every row of a state repeated n times along the batch (the model's own repeat_state when it has one)."""
    if hasattr(model, "repeat_state"):
        return model.repeat_state(state, n)
    return state_rows(state, torch.arange(state_batch_size(state)).repeat_interleave(n))


def can_batch(model) -> bool:
    """Whether `stream_prompts` / `score_candidates` may batch this model's streams: state models whose state
    rows can be selected, and window models (their state is the tail of the token stream, one row per stream, and
    streams fed in lockstep have tails of one length)."""
    return model.streaming in ("state", "window") and bool(getattr(model, "batched_state", False))


@torch.no_grad()
def stream_prompts(model, prompts: Sequence[Sequence[int]], seg_len: int, device):
    """Feed several prompts in lockstep; yields (prompt index, log-probs after its last token [V], its state with
    batch 1) as each prompt ends, shortest first (ties: the earlier index first)."""
    if not can_batch(model):
        raise StreamingUnsupported(f"{type(model).__name__} streams cannot be batched (streaming="
                                   f"{model.streaming!r}, batched_state={getattr(model, 'batched_state', None)})")
    if seg_len < 1:
        raise ValueError(f"seg_len must be >= 1, got {seg_len}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    ids = {i: torch.as_tensor(list(prompts[i]), dtype=torch.long, device=device) for i in order}
    active, state, pos = order, None, 0
    while active:
        end = min((pos // seg_len + 1) * seg_len, len(prompts[active[0]]))  # the grid or the next prompt's end
        logits, _, state = model(torch.stack([ids[i][pos:end] for i in active]), state=state)
        pos = end
        done = [row for row, i in enumerate(active) if len(prompts[i]) == pos]
        if not done:
            continue
        last = F.log_softmax(logits[done, -1].double(), dim=-1)
        for k, row in enumerate(done):
            yield active[row], last[k], select_state(model, state, [row])
        keep = [row for row, i in enumerate(active) if len(prompts[i]) != pos]
        if keep:
            state = select_state(model, state, keep)
        active = [active[row] for row in keep]


@torch.no_grad()
def score_candidates(model, first_logprobs: torch.Tensor, state, candidates: Sequence[Sequence[int]], device
                     ) -> list[float]:
    """log p(candidate | prompt) of every candidate from the prompt's last log-probs and its state (batch 1), with
    one call over all candidates longer than one token (right-padded)."""
    scores = [float(first_logprobs[c[0]]) for c in candidates]
    rest = [k for k, c in enumerate(candidates) if len(c) > 1]
    if not rest:
        return scores
    width = max(len(candidates[k]) for k in rest)
    ids = torch.zeros(len(rest), width, dtype=torch.long, device=device)  # padding: token 0, after the real tokens
    real = torch.zeros(len(rest), width - 1, dtype=torch.bool, device=device)
    for row, k in enumerate(rest):
        c = candidates[k]
        ids[row, :len(c)] = torch.as_tensor(list(c), dtype=torch.long, device=device)
        real[row, :len(c) - 1] = True
    logits, _, _ = model(ids[:, :-1], state=repeat_state(model, state, len(rest)))
    logprobs = F.log_softmax(logits.double(), dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
    totals = logprobs.masked_fill(~real, 0.0).sum(dim=1)
    for row, k in enumerate(rest):
        scores[k] += float(totals[row])
    return scores


@torch.no_grad()
def score_choices_batched(model, prompts: Sequence[Sequence[int]], candidates: Sequence[Sequence[Sequence[int]]],
                          seg_len: int, device) -> list[list[float]]:
    """The batched form of score_choices_streaming over several prompts (candidates[i] are prompt i's)."""
    out: list[list[float] | None] = [None] * len(prompts)
    for i, first, state in stream_prompts(model, prompts, seg_len, device):
        out[i] = score_candidates(model, first, state, candidates[i], device)
    return out


# -- generation ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy_generate(model, prompt_ids, seg_len: int, device, max_new_tokens: int, stop_ids=()) -> list[int]:
    logprobs, state, _ = stream_prompt(model, prompt_ids, seg_len, device)
    return greedy_continue(model, logprobs, state, device, max_new_tokens, stop_ids)


@torch.no_grad()
def greedy_continue(model, logprobs, state, device, max_new_tokens: int, stop_ids=()) -> list[int]:
    """Greedy decoding from a prompt's last log-probs and its state (batch 1). Raises NonFiniteOutput where the
    model's log-probs are not finite (argmax over NaN would pick a token the model never chose)."""
    out: list[int] = []
    for _ in range(max_new_tokens):
        if not bool(torch.isfinite(logprobs).all()):
            raise NonFiniteOutput("the model's log-probs are not finite")
        token = int(torch.argmax(logprobs))
        out.append(token)
        if token in stop_ids:
            break
        logits, _, state = model(torch.tensor([[token]], device=device), state=state)
        logprobs = F.log_softmax(logits[0, -1].double(), dim=-1)
    return out


class NonFiniteOutput(ArithmeticError):
    """The model's output for a sample is NaN or infinite (e.g. a memory state that overflowed along a long
    stream): there is no answer to judge, and the sample counts as wrong and as non-finite in the record."""


def none_if_nonfinite(fn, *args):
    """fn(*args), or None where it raised NonFiniteOutput (the sample has no answer: the caller counts it wrong)."""
    try:
        return fn(*args)
    except NonFiniteOutput:
        return None


def argmax_first(scores: Sequence[float]) -> int:
    """The index of the highest score, the first on ties. Raises NonFiniteOutput on a NaN or infinite score: a
    comparison with NaN is always false, so NaN scores would otherwise silently pick the first candidate."""
    if not all(math.isfinite(s) for s in scores):
        raise NonFiniteOutput("a candidate's score is not finite")
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best
