"""What training reads, in its own module: the model (router fitting), the trainer and the
calibration all take it, and none of them should import another to get it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainData:
    """Per modality m: features (n_m, d_m) and labels (n_m,) of the samples it recorded.

    In MMHCL each training sample is seen by exactly one modality, and only on that
    modality's seen classes.
    """

    features: list[torch.Tensor]
    labels: list[torch.Tensor]
