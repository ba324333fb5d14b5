"""Scoring one sample with a model, segment by segment, so memory stays bounded at any sample length.

The prompt is fed in segments of `seg_len` tokens carrying the model's streaming state (`model(ids, state=...)`,
harness/adapter.py); the logits after the last prompt token and the final state then score each candidate
answer from a copy of that state (the model may update its state in place, so each candidate gets a deep copy).

- choice scoring: log p(candidate | prompt) = sum over the candidate's tokens of log-softmax logits; the answer
  is the label with the highest log-likelihood (ties: the first label in the task's label order).
- generation: greedy decoding of up to `max_new_tokens` tokens, fed one token at a time with the state; the text
  is then judged by the benchmark's rule (scoring.compare_answers).

`score_choices_full` is the one-call reference (the whole prompt + candidate in one forward); tests check that
the streamed scores equal it.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

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


@torch.no_grad()
def greedy_generate(model, prompt_ids, seg_len: int, device, max_new_tokens: int, stop_ids=()) -> list[int]:
    logprobs, state, _ = stream_prompt(model, prompt_ids, seg_len, device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(torch.argmax(logprobs))
        out.append(token)
        if token in stop_ids:
            break
        logits, _, state = model(torch.tensor([[token]], device=device), state=state)
        logprobs = F.log_softmax(logits[0, -1].double(), dim=-1)
    return out


def argmax_first(scores: Sequence[float]) -> int:
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best
