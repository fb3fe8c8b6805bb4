"""The CSCF paper's seven baselines (Table 1), reimplemented in PyTorch for the MMHCL protocol.

Zero-shot methods (one model per modality, confidence selection): ZLA, DGZ, DSECN.
Multimodal classification: TMC, Mmdynamics. Incomplete multi-view: LMVCAT, UVaT.
Every method has the `Baseline` interface: `fit(TrainData, TrainConfig) -> losses` and
`predict(features, present) -> BaselineOutput(scores, dominant)`. Each module's
docstring names the source paper, its core idea and every deviation from it.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from .common import Baseline, BaselineOutput, ConfidencePair
from .dgz import DGZModel
from .dsecn import DSECNModel
from .lmvcat import LMVCAT
from .mmdynamics import Mmdynamics
from .tmc import TMC
from .uvat import UVaT
from .zla import ZLAModel

BASELINES = ("TMC", "ZLA", "DGZ", "DSECN", "Mmdynamics", "LMVCAT", "UVaT")

_REGISTRY: dict[str, Callable[[list[int], torch.Tensor, torch.Tensor], Baseline]] = {
    "TMC": TMC,
    "ZLA": partial(ConfidencePair, unimodal=ZLAModel),
    "DGZ": partial(ConfidencePair, unimodal=DGZModel),
    "DSECN": partial(ConfidencePair, unimodal=DSECNModel),
    "Mmdynamics": Mmdynamics,
    "LMVCAT": LMVCAT,
    "UVaT": UVaT,
}


def create_baseline(name: str, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> Baseline:
    """Build baseline `name` (one of BASELINES) for modalities of `input_dims` features,
    class semantic vectors class_emb (N, d_s) and seen (M, N), the classes each modality
    saw in training. Returned in eval mode, so a state_dict loaded into it predicts at once."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINES)}")
    if class_emb.ndim != 2:
        raise ValueError(f"class_emb must be (classes, d_s), got {tuple(class_emb.shape)}")
    if seen.shape != (len(input_dims), class_emb.shape[0]):
        raise ValueError(
            f"seen must be (modalities={len(input_dims)}, classes={class_emb.shape[0]}), got {tuple(seen.shape)}"
        )
    return _REGISTRY[name](list(input_dims), class_emb, seen).eval()


__all__ = ["BASELINES", "Baseline", "BaselineOutput", "create_baseline"]
