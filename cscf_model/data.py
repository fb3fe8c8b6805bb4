"""What training reads, in its own module: the model (router fitting), the trainer and the
calibration all take it, and none of them should import another to get it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

ROWS = 8_192  # rows turned into fp32 at a time where the stored vectors may be bf16
# Least variance an input dimension is standardised with, as a share of the mean variance
# over dimensions (standard_scale). A dimension constant in training would otherwise be
# divided by ~0, and a test value a hair off that constant would read as millions of
# standard deviations: a test pixel never inked in training, or the bf16 rounding of a
# constant training value (digits, stored in bf16: 85 -> 47 on A_all+B_all before this
# floor reached the model's own standardisation). 1e-4 (a standard deviation 1% of the
# typical one) binds only on (near-)constant dimensions: real feature dimensions sit far
# above it (the embedded default's lowest variance is 0.83 of the mean).
VARIANCE_FLOOR = 1e-4


@dataclass
class TrainData:
    """Per modality m: features (n_m, d_m) and labels (n_m,) of the samples it recorded.

    In MMHCL each training sample is seen by exactly one modality, and only on that
    modality's seen classes. The features may be stored in bf16 (half the memory: at
    AudioSet's size fp32 copies alone would fill the machine); whatever reads them does
    its arithmetic in fp32, a block of `float_blocks` at a time or one modality at once.
    """

    features: list[torch.Tensor]
    labels: list[torch.Tensor]


# A matrix, or its row blocks in order: the router reads a modality's fit and validation
# samples as one matrix, and concatenating them would copy GBs at AudioSet's size.
Matrix = torch.Tensor | Sequence[torch.Tensor]


def matrix_shape(x: Matrix) -> tuple[int, int]:
    """(rows, columns) of a Matrix."""
    parts = [x] if isinstance(x, torch.Tensor) else x
    return sum(len(p) for p in parts), parts[0].shape[1]


def float_blocks(x: Matrix, rows: int = ROWS) -> Iterator[torch.Tensor]:
    """x's rows in order as fp32 blocks of at most `rows`: fp32 math on bf16 storage without
    an fp32 copy of all of x."""
    for matrix in [x] if isinstance(x, torch.Tensor) else x:
        for part in matrix.split(rows):
            yield part.float()


def column_stats(x: Matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) -> per-column mean and unbiased std (d,), fp32, accumulated in float64 over
    float_blocks: exact for bf16 storage, where torch's own reductions would round the
    result to bf16. Two passes (mean, then squared deviations) as x.std(0) does."""
    n, d = matrix_shape(x)
    total = torch.zeros(d, dtype=torch.float64)
    for part in float_blocks(x):
        total += part.sum(0, dtype=torch.float64)
    mean = total / max(n, 1)
    squares = torch.zeros_like(total)
    for part in float_blocks(x):
        squares += (part.double() - mean).square().sum(0)
    std = (squares / max(n - 1, 1)).sqrt() if n > 1 else torch.full_like(mean, float("nan"))
    return mean.float(), std.float()


def standard_scale(x: Matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) -> mean (d,) and the scale to standardise by (d,): the standard deviation, at
    least sqrt(VARIANCE_FLOOR * mean variance), and at least 1e-6 (data with no variance at
    all). Where the floor does not bind this is exactly column_stats' std."""
    mean, std = column_stats(x)
    floor = (VARIANCE_FLOOR * std.square().mean()).sqrt()
    return mean, torch.maximum(std, floor).clamp_min(1e-6)
