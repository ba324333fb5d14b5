"""Log-likelihood of token sequences under a model, the two ways lm-eval-style scoring needs.

A scoring item is `(tokens, n_scored)`: the model reads tokens[:-1] and the last `n_scored` of the predictions
tokens[1:] are scored (the earlier ones are context only). Two ways to run an item:

  stream  - models with streaming "state": the whole item is fed in consecutive segments of `seq_len` tokens with
            the state carried (`model(ids, state=...)`), so every token is conditioned on everything before it
            while memory stays bounded by the segment length.
  window  - one plain call `model(ids)` per item; the caller keeps items at most seq_len + 1 tokens long
            (lm-eval's rolling windows, `rolling_windows` below, or a left-truncated context).

Items are batched by right-padding (pads follow every real token, so a causal model's outputs at real positions
are unchanged); batches group items of similar length.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

PAD_ID = 0  # padding input; its predictions are never scored


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int) -> list[tuple[list[int], int]]:
    """lm-eval's `get_rolling_token_windows(..., context_len=1)` + `make_disjoint_window`, as scoring items:
    the first window predicts tokens[:max_len] from [prefix] + tokens[:max_len-1]; each later window predicts the
    next (up to) max_len tokens from the max_len tokens before each, i.e. a full window is conditioned only on the
    token just before it and a short last window re-reads earlier tokens to fill max_len. Every token is predicted
    exactly once."""
    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    tokens = list(tokens)
    items, done = [], 0
    while done < len(tokens):
        end = min(done + max_len, len(tokens))
        window = [prefix_token] + tokens[:end] if done == 0 else tokens[end - max_len - 1:end]
        items.append((window, end - done))
        done = end
    return items


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double() if logits.dtype == torch.float64 else logits.float(), dim=-1)


@torch.no_grad()
def score_items(model, items: Sequence[tuple[Sequence[int], int]], *, stream: bool, seq_len: int, batch_size: int,
                device: torch.device | str = "cpu", progress: bool = False, desc: str = "scoring",
                keep_token_logprobs: bool = False) -> list[dict[str, Any]]:
    """For each item: {"logprob": sum of scored log-probs (nats), "n": n_scored, "greedy": every scored token is
    the argmax, and "token_logprobs" (list) if asked}. Results are in the order of `items`."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError("seq_len and batch_size must be >= 1")
    for tokens, n in items:
        if not 1 <= n <= len(tokens) - 1:
            raise ValueError(f"an item of {len(tokens)} tokens cannot score {n} predictions")
        if not stream and len(tokens) - 1 > seq_len:
            raise ValueError(f"a window item of {len(tokens)} tokens exceeds seq_len + 1 = {seq_len + 1}")
    model.eval()
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    results: list[dict | None] = [None] * len(items)
    bar = tqdm(total=sum(n for _, n in items), unit="tok", unit_scale=True, desc=desc, disable=not progress)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(items[i][0]) for i in idx) - 1  # longest input in the batch
        inputs = torch.full((len(idx), width), PAD_ID, dtype=torch.long)
        targets = torch.full((len(idx), width), -1, dtype=torch.long)
        for row, i in enumerate(idx):
            tokens, n = items[i]
            t = torch.as_tensor(list(tokens), dtype=torch.long)
            inputs[row, :len(t) - 1] = t[:-1]
            scored = torch.full((len(t) - 1,), -1, dtype=torch.long)
            scored[-n:] = t[-n:]
            targets[row, :len(t) - 1] = scored
        inputs, targets = inputs.to(device), targets.to(device)
        token_lp = torch.zeros(targets.shape, dtype=torch.float64)
        greedy = torch.ones(targets.shape, dtype=torch.bool)
        if stream:
            state = None
            for start in range(0, width, seq_len):
                logits, _, state = model(inputs[:, start:start + seq_len], state=state)
                _gather(logits, targets[:, start:start + seq_len], token_lp[:, start:start + seq_len],
                        greedy[:, start:start + seq_len])
        else:
            logits, _ = model(inputs)
            _gather(logits, targets, token_lp, greedy)
        mask = targets.cpu() >= 0
        for row, i in enumerate(idx):
            m = mask[row]
            out = {"logprob": float(token_lp[row][m].sum()), "n": int(m.sum()), "greedy": bool(greedy[row][m].all())}
            if keep_token_logprobs:
                out["token_logprobs"] = token_lp[row][m].tolist()
            if not math.isfinite(out["logprob"]):
                raise FloatingPointError("a log-likelihood is not finite (the model produced inf/nan logits)")
            results[i] = out
        bar.update(int(mask.sum()))
    bar.close()
    return results  # type: ignore[return-value]


def _gather(logits: torch.Tensor, targets: torch.Tensor, token_lp: torch.Tensor, greedy: torch.Tensor) -> None:
    """Write the log-probs of the targets (and whether each is the argmax) into token_lp / greedy in place."""
    lp = _log_probs(logits)
    safe = targets.clamp_min(0)
    picked = lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    is_max = lp.argmax(dim=-1) == safe
    valid = targets >= 0
    token_lp.copy_(torch.where(valid, picked, torch.zeros_like(picked)).double().cpu())
    greedy.copy_((is_max | ~valid).cpu())
