"""Newton-Schulz orthogonalisation: G = U S V^T  ->  approximately U V^T, without an SVD (Muon, Jordan et al. 2024,
https://kellerjordan.github.io/posts/muon/; Bernstein & Newhouse 2024, "Old Optimizer, New Norm").

Each iteration applies an odd polynomial to the singular values, X <- a X + b (X X^T) X + c (X X^T)^2 X, after
scaling X so that every singular value is <= 1. The default quintic coefficients (3.4445, -4.7750, 2.0315) push
small singular values up fast; after 5 steps they lie in roughly [0.7, 1.2] rather than exactly 1 (Muon does not
need more). The cubic (1.5, -0.5, 0) converges to exactly U V^T, slowly. Rectangular matrices work on the smaller
Gram side: a tall G (rows > cols) is transposed, so X X^T is min(m, n) square.
"""

from __future__ import annotations

import torch

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
CUBIC_COEFFICIENTS = (1.5, -0.5, 0.0)


def newton_schulz(G: torch.Tensor, steps: int = 5, coefficients=MUON_COEFFICIENTS, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Orthogonalise a 2-D matrix. `dtype`: the working precision (None: G's own, at least float32 on CPU)."""
    if G.dim() != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    work = dtype or (G.dtype if G.dtype in (torch.float32, torch.float64) else torch.float32)
    X = G.to(work)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / X.norm().clamp_min(eps)  # Frobenius norm >= spectral norm, so all singular values <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.T
    return X.to(G.dtype)


def orthogonal_update_scale(shape) -> float:
    """Muon's shape correction sqrt(max(1, rows/cols)) (torch.optim.Muon's adjust_lr_fn="original"), so that the
    update's RMS is comparable across rectangular shapes."""
    rows, cols = shape[0], shape[1]
    return max(1.0, rows / cols) ** 0.5
