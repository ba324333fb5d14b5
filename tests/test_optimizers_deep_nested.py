"""DeepNestedOptimizer: starts as AdamW, the continuum memory levels update at their periods, the unrolled
meta-objective matches the real step and finite differences, meta_update trains the learned pieces without moving
the model, NaN guards skip bad steps and say so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.presets import TINY
from optimizers.deep_nested import build
from optimizers.deep_nested.meta import unrolled_validation_loss



class TinyLM(nn.Module):
    """Embedding -> Linear -> tanh -> RMSNorm -> head: core and embed groups, cheap in float64."""

    vocab_size = 16

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.mix = nn.Linear(8, 8, bias=False)
        self.norm = nn.RMSNorm(8)
        self.lm_head = nn.Linear(8, 16, bias=False)

    def forward(self, ids):
        return self.lm_head(self.norm(torch.tanh(self.mix(self.emb(ids)))))


def loss_fn(model, inputs, targets):
    return F.cross_entropy(model(inputs).reshape(-1, 16), targets.reshape(-1))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (3, 9), generator=g)
    return x[:, :-1], x[:, 1:]


def setup(dtype=torch.float32, preset=TINY, **options):
    torch.manual_seed(0)
    model = TinyLM().to(dtype)
    opt = build(model, preset, loss_fn=loss_fn, **options)
    opt.momentum_net.to(dtype)
    opt.controller.to(dtype)
    return model, opt


def real_step(model, opt, b, clip=TINY.grad_clip):
    loss = loss_fn(model, *b)
    opt.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(opt, "observe_loss"):
        opt.observe_loss(loss.item())
    opt.step()
    return loss.item()


def test_groups_are_core_matrices_and_embed_rest():
    model, opt = setup()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert groups == {"core": {"mix.weight"}, "embed": {"emb.weight", "norm.weight", "lm_head.weight"}}


def test_at_initialisation_it_is_adamw():
    """Level mix (1, 0, 0), zero MLP output and multiplier 1: exactly AdamW's update rule."""
    model, opt = setup(torch.float64, betas="0.9,0.95")
    reference = TinyLM().to(torch.float64)
    reference.load_state_dict(model.state_dict())
    adamw = torch.optim.AdamW([{"params": [reference.mix.weight], "weight_decay": TINY.weight_decay},
                               {"params": [reference.emb.weight, reference.norm.weight, reference.lm_head.weight],
                                "weight_decay": 0.0}], lr=TINY.lr, betas=(0.9, 0.95), eps=1e-8)
    for seed in range(4):
        real_step(model, opt, batch(seed))
        real_step(reference, adamw, batch(seed))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_continuum_memory_levels_update_at_their_periods():
    model, opt = setup(medium_every="3", slow_every="6")
    p = model.mix.weight
    for step in range(1, 7):
        real_step(model, opt, batch(step))
        state = opt.state[p]
        assert bool(state["m1"].abs().sum() > 0) == (step >= 3), step
        assert bool(state["m2"].abs().sum() > 0) == (step >= 6), step
        assert bool(state["acc1"].abs().sum() == 0) == (step % 3 == 0), step


def test_one_unrolled_step_is_the_real_step():
    """The unroll uses the same update as step(): after 1 inner step, L_val equals L_val after a real step."""
    model, opt = setup(torch.float64)
    real_step(model, opt, batch(0))  # some optimizer state first
    with torch.enable_grad():
        unrolled = unrolled_validation_loss(opt, [batch(1)], batch(9)).item()
    real_step(model, opt, batch(1))
    assert unrolled == pytest.approx(loss_fn(model, *batch(9)).item(), abs=1e-12)


def test_second_order_meta_gradient_matches_finite_differences():
    model, opt = setup(torch.float64, preset=TINY.with_overrides(grad_clip=0.0, lr=0.05), meta_order="2")
    for seed in range(2):
        real_step(model, opt, batch(seed), clip=0.0)
    with torch.no_grad():  # move off the zero-output initialisation so every path carries gradient
        for p in opt.meta_parameters():
            p.add_(0.05 * torch.randn_like(p))
    batches, val = [batch(5), batch(6)], batch(9)
    probes = [opt.controller.mlp[-1].bias, opt.momentum_net.level_mix, opt.momentum_net.mlp[0].weight]

    def meta_loss():
        with torch.enable_grad():
            return unrolled_validation_loss(opt, batches, val, second_order=True)

    grads = torch.autograd.grad(meta_loss(), probes)
    for p, g in zip(probes, grads):
        direction = torch.randn_like(p)
        h = 1e-5
        with torch.no_grad():
            p.add_(h * direction)
        plus = meta_loss().item()
        with torch.no_grad():
            p.sub_(2 * h * direction)
        minus = meta_loss().item()
        with torch.no_grad():
            p.add_(h * direction)
        fd = (plus - minus) / (2 * h)
        assert abs(g.mul(direction).sum().item()) > 1e-8  # the probe matters
        assert g.mul(direction).sum().item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("order", ["1", "2"])
def test_explicit_meta_update_trains_controller_and_leaves_model_untouched(order):
    model, opt = setup(meta_order=order)
    for seed in range(3):
        real_step(model, opt, batch(seed))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    controller = [p.detach().clone() for p in opt.controller.parameters()]
    momentum = [p.detach().clone() for p in opt.momentum_net.parameters()]
    rng = torch.get_rng_state()

    meta_loss = opt.meta_update(val_batch=batch(9), train_batches=[batch(3), batch(4), batch(5)], use_unrolled=True)

    assert meta_loss is not None and meta_loss > 0
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]), n  # exactly where the unroll started
    for p, s in opt.state.items():
        assert all(torch.equal(v, state[id(p)][k]) for k, v in s.items())
    assert any(not torch.equal(a, b) for a, b in zip(controller, opt.controller.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(momentum, opt.momentum_net.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    report = opt.report()
    assert report["meta_updates"] == 1 and report["meta_losses"] == [(3, meta_loss)]


def test_meta_update_works_under_inference_mode():
    """The runner may call it from its evaluation code."""
    model, opt = setup()
    real_step(model, opt, batch(0))
    with torch.inference_mode():
        val, train = batch(9), [batch(1)]
        assert opt.meta_update(val_batch=val, train_batches=train) is not None


def test_simple_mode_meta_updates_from_the_training_loss():
    model, opt = setup(mode="simple", meta_every="2", meta_lr="0.01")
    controller = [p.detach().clone() for p in opt.controller.parameters()]
    for seed in range(7):
        real_step(model, opt, batch(seed))
    report = opt.report()
    assert report["meta_updates"] == 3  # recorded at steps 2, 4, 6; applied at 3, 5, 7
    assert [s for s, _ in report["meta_losses"]] == [2, 4, 6]
    assert all(v < 0 for _, v in report["meta_losses"])  # each step was predicted to lower the training loss
    assert any(not torch.equal(a, b) for a, b in zip(controller, opt.controller.parameters()))


def test_nan_gradient_skips_the_step_and_is_reported():
    model, opt = setup()
    real_step(model, opt, batch(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = loss_fn(model, *batch(1))
    opt.zero_grad()
    loss.backward()
    model.mix.weight.grad[0, 0] = float("nan")
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert opt.report()["skipped_nonfinite_grad"] == 1 and opt.global_step == 1
    real_step(model, opt, batch(2))  # and training goes on
    assert opt.global_step == 2 and all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_update_skips_the_step_and_is_reported():
    model, opt = setup()
    real_step(model, opt, batch(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    with torch.no_grad():
        opt.momentum_net.mlp[-1].bias.fill_(float("nan"))
    real_step(model, opt, batch(1))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(torch.equal(v, state[id(p)][k]) for p, s in opt.state.items() for k, v in s.items())
    assert opt.report()["skipped_nonfinite_update"] == 1


def test_nan_controller_falls_back_to_multiplier_one():
    model, opt = setup()
    with torch.no_grad():
        opt.controller.mlp[-1].bias.fill_(float("nan"))
    real_step(model, opt, batch(0))
    assert opt.report()["controller_fallbacks"] == 1 and opt.global_step == 1
    assert torch.equal(opt.lr_mults, torch.ones_like(opt.lr_mults))
