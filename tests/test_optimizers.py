"""Every registered optimizer: parameter roles, loss goes down on a fixed batch, state dicts round-trip exactly,
CLI options are typed and validated."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.adapter import build_model
from harness.errors import HarnessError
from harness.presets import TINY
from harness.registry import OPTIMIZERS
from optimizers.param_groups import param_roles, params_by_role

SMALL = dict(dim=64, depth=2, heads=2)  # a smaller tiny: CPU Muon runs Newton-Schulz in bfloat16, which is slow
NAMES = ["adamw", "muon", "mugrokfast", "adopt-atan2", "deep-nested"]
CASES = [(n, {}) for n in NAMES] + [("deep-nested", {"mode": "simple", "meta_every": "3"})]



def loss_fn(model, inputs, targets):
    logits, aux = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) + aux


def fixed_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (4, 33), generator=g)
    return x[:, :-1], x[:, 1:]


def make(name, options, seed=0):
    torch.manual_seed(seed)
    model = build_model("transformer-pp", "tiny", 256, overrides=SMALL)
    opt = OPTIMIZERS.load(name)(model, TINY, loss_fn=loss_fn, **options)
    return model, opt


def train(model, opt, batch, steps, sched=None, meta_every=0):
    losses = []
    for step in range(steps):
        loss = loss_fn(model, *batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TINY.grad_clip)
        if hasattr(opt, "observe_loss"):
            opt.observe_loss(loss.item())
        opt.step()
        if sched is not None:
            sched.step()
        if meta_every and getattr(opt, "mode", None) == "explicit" and (step + 1) % meta_every == 0:
            opt.meta_update(val_batch=fixed_batch(1), train_batches=[batch, fixed_batch(2)], use_unrolled=True)
        losses.append(loss.item())
    return losses


# -- parameter roles ---------------------------------------------------------------------------------------------
def test_roles_on_transformer_pp():
    model = build_model("transformer-pp", "tiny", 256)
    roles = param_roles(model)
    assert len(roles) == len(list(model.parameters()))
    by = {r: {n for n, rr in roles.items() if rr == r} for r in set(roles.values())}
    assert by["embedding"] == {"net.token_emb.emb.weight"}
    assert by["head"] == {"net.to_logits.weight"}
    assert by["norm"] == {n for n in roles if n.endswith(".g")}  # x-transformers RMSNorm gains, incl. final_norm
    assert "net.attn_layers.final_norm.g" in by["norm"] and len(by["norm"]) == 9
    assert by["bias"] == {n for n in roles if n.endswith(".bias")}
    assert by["matrix"] == {n for n, p in model.named_parameters()
                            if p.dim() == 2 and n not in ("net.token_emb.emb.weight", "net.to_logits.weight")}
    assert len(by["matrix"]) == 24 and set(by) == {"embedding", "head", "norm", "bias", "matrix"}


class ToyMoE(nn.Module):
    """Head-like hidden Linear registered *after* the real head, a tied head, a router, raw parameters."""

    def __init__(self, vocab=32, dim=16, tie=False):
        super().__init__()
        self.vocab_size = vocab
        self.tok = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.tok.weight
        self.ln = nn.LayerNorm(dim)
        self.rms = nn.RMSNorm(dim)
        self.router = nn.Linear(dim, 4)
        self.expert_up = nn.Linear(dim, vocab)  # out_features == vocab, but not named like a head
        self.conv = nn.Conv1d(dim, dim, 3, groups=dim)
        self.persistent_memory = nn.Parameter(torch.zeros(4, dim))
        self.decay = nn.Parameter(torch.zeros(dim))
        self.memory_w1 = nn.Parameter(torch.zeros(dim, dim))
        self.frozen = nn.Parameter(torch.zeros(dim), requires_grad=False)


def test_roles_on_a_custom_module():
    roles = param_roles(ToyMoE())
    assert roles == {"tok.weight": "embedding", "lm_head.weight": "head", "ln.weight": "norm", "ln.bias": "norm",
                     "rms.weight": "norm", "router.weight": "router", "router.bias": "router",
                     "expert_up.weight": "matrix", "expert_up.bias": "bias", "conv.weight": "other",
                     "conv.bias": "bias", "persistent_memory": "embedding", "decay": "other",
                     "memory_w1": "matrix"}
    tied = param_roles(ToyMoE(tie=True))
    assert tied["tok.weight"] == "embedding" and "lm_head.weight" not in tied  # one tensor, listed once
    grouped = params_by_role(ToyMoE())
    assert sum(len(v) for v in grouped.values()) == 14


def test_head_is_last_vocab_linear_without_head_names():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"vocab_size": 10})()
            self.emb = nn.Embedding(10, 8)
            self.a = nn.Linear(8, 10)
            self.b = nn.Linear(10, 10, bias=False)

    roles = param_roles(Plain())
    assert roles["b.weight"] == "head" and roles["a.weight"] == "matrix"


def test_muon_split_follows_roles():
    from optimizers.muon import split_params

    model = build_model("transformer-pp", "tiny", 256)
    muon, decay, no_decay = split_params(model)
    roles, params = param_roles(model), dict(model.named_parameters())
    assert {id(p) for p in muon} == {id(params[n]) for n, r in roles.items() if r == "matrix"}
    assert {id(p) for p in decay} == {id(params["net.to_logits.weight"])}
    assert len(no_decay) == 1 + 9 + 4  # embedding, norms, biases


# -- every optimizer trains --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o.get('mode', '')}" for n, o in CASES])
def test_loss_decreases_on_a_fixed_batch(name, options):
    model, opt = make(name, options)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))  # the runner's kind of schedule
    losses = train(model, opt, fixed_batch(), steps=20, sched=sched, meta_every=5)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}-{o.get('mode', '')}" for n, o in CASES])
def test_state_dict_round_trip_continues_identically(name, options):
    model, opt = make(name, options)
    schedule = lambda s: min(1.0, (s + 1) / 4)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    batch = fixed_batch()
    train(model, opt, batch, steps=4, sched=sched, meta_every=2)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as the harness loads checkpoints

    model2, opt2 = make(name, options, seed=123)  # different init: everything must come from the checkpoint
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, schedule)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]

    train(model, opt, batch, steps=3, sched=sched, meta_every=2)
    train(model2, opt2, batch, steps=3, sched=sched2, meta_every=2)
    for (n, a), b in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), f"{name}: {n} differs after resuming"
    if hasattr(opt, "report"):
        assert opt.report() == opt2.report()


# -- options -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_one_line_error_listing_valid_keys(name):
    model = build_model("transformer-pp", "tiny", 256, overrides=SMALL)
    with pytest.raises(HarnessError) as err:
        OPTIMIZERS.load(name)(model, TINY, loss_fn=loss_fn, nonsense="1")
    msg = str(err.value)
    assert "nonsense" in msg and "valid:" in msg and "\n" not in msg


def test_options_are_converted_from_strings():
    model = build_model("transformer-pp", "tiny", 256, overrides=SMALL)
    opt = OPTIMIZERS.load("muon")(model, TINY, muon_lr="0.01", adamw_lr="0.002", nesterov="false", ns_steps="3",
                                  betas="0.8,0.9")
    muon = opt.optimizers["muon"].param_groups[0]
    assert muon["lr"] == 0.01 and muon["nesterov"] is False and muon["ns_steps"] == 3
    assert opt.optimizers["adamw"].param_groups[0]["lr"] == 0.002
    assert opt.optimizers["adamw"].param_groups[0]["betas"] == (0.8, 0.9)
    for bad in ({"ns_steps": "2.5"}, {"nesterov": "maybe"}, {"adjust_lr_fn": "x"}, {"betas": "0.9"},
                {"muon_lr": "-1"}):
        with pytest.raises(HarnessError):
            OPTIMIZERS.load("muon")(model, TINY, **bad)
    with pytest.raises(HarnessError, match="mode"):
        OPTIMIZERS.load("deep-nested")(model, TINY, mode="fancy")


def test_default_learning_rates_follow_the_preset():
    from harness.presets import GPU24GB

    model = build_model("transformer-pp", "tiny", 256, overrides=SMALL)
    opt = OPTIMIZERS.load("muon")(model, GPU24GB)
    assert opt.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.04)  # the seed's MoE baseline
    assert opt.optimizers["adamw"].param_groups[0]["lr"] == pytest.approx(0.006)
    assert isinstance(opt, torch.optim.Optimizer)
