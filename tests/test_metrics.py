import math

import pytest
import torch

from tasks.bytelevel import ByteLMTask
from tasks.metrics import bits_per_byte, ratio_with_stderr


def test_bpb_of_uniform_model_is_8_bits():
    assert bits_per_byte(1000 * math.log(256), 1000) == pytest.approx(8.0)


def test_ratio_stderr_hand_computed():
    # clusters: (nll 2, 1 unit), (nll 6, 2 units): R = 8/3; residuals 2-8/3=-2/3, 6-16/3=2/3
    ratio, se = ratio_with_stderr([2.0, 6.0], [1, 2])
    assert ratio == pytest.approx(8 / 3)
    assert se == pytest.approx(math.sqrt(2 / 1 * (4 / 9 + 4 / 9)) / 3)


class FixedModel(torch.nn.Module):
    """Predicts byte b+1 with probability p after byte b, uniform over the other 255 bytes."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, ids):
        probs = torch.full((*ids.shape, 256), (1 - self.p) / 255)
        probs.scatter_(-1, ((ids + 1) % 256).unsqueeze(-1), self.p)
        return probs.log(), torch.zeros(())


def test_windowed_bpb_matches_hand_computation():
    # test split "abcabd": transitions a->b (hit), b->c (hit), c->a (miss), a->b (hit), b->d (miss)
    test = b"abcabd"
    task = ByteLMTask(b"x" * 100, b"y" * 100, test, {})
    p = 0.5
    hit, miss = -math.log(p), -math.log((1 - p) / 255)
    expected_bits = (3 * hit + 2 * miss) / (5 * math.log(2))
    for seq_len in (2, 3, 5, 16):  # the window size must not change what is scored
        metrics = task.evaluate(FixedModel(p), device=torch.device("cpu"), seq_len=seq_len, batch_size=2,
                                progress=False)
        assert metrics["bpb"].value == pytest.approx(expected_bits, rel=1e-6)
        assert metrics["bpb"].n == 5
