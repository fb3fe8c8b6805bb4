"""The CSCF paper's seven baselines (Table 1), reimplemented in PyTorch for the MMHCL protocol.

Zero-shot methods (one model per modality, confidence selection): ZLA, DGZ, DSECN.
Multimodal classification: TMC, Mmdynamics. Incomplete multi-view: LMVCAT, UVaT.
Every method runs on M >= 2 modalities with any (M, N) seen pattern and has the
`Baseline` interface: `fit(TrainData, TrainConfig) -> losses` and
`predict(features, present) -> BaselineOutput(scores, dominant)`. The zero-shot methods
score every class per modality, so calibrated stacking applies to them (`CALIBRATABLE`,
common.fit_margins). Each module's docstring names the source paper, its core idea and
every deviation from it.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from .common import Baseline, BaselineOutput, ConfidencePair, fit_margins
from .dgz import DGZModel
from .dsecn import DSECNModel, ExternalSemantics, head_noun_taxonomy
from .lmvcat import LMVCAT
from .mmdynamics import Mmdynamics
from .tmc import TMC
from .uvat import UVaT
from .zla import ZLAModel

BASELINES = ("TMC", "ZLA", "DGZ", "DSECN", "Mmdynamics", "LMVCAT", "UVaT")
CALIBRATABLE = ("ZLA", "DGZ", "DSECN")
NEEDS_EXTERNAL = ("DSECN",)


def _dsecn(input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor,
           external: ExternalSemantics | None) -> Baseline:
    if external is None:
        raise ValueError("DSECN needs the external class names' embeddings (external=ExternalSemantics)")
    return ConfidencePair(input_dims, class_emb, seen, partial(DSECNModel, external=external))


_REGISTRY: dict[str, Callable[[list[int], torch.Tensor, torch.Tensor, ExternalSemantics | None], Baseline]] = {
    "TMC": lambda d, c, s, e: TMC(d, c, s),
    "ZLA": lambda d, c, s, e: ConfidencePair(d, c, s, ZLAModel),
    "DGZ": lambda d, c, s, e: ConfidencePair(d, c, s, DGZModel),
    "DSECN": _dsecn,
    "Mmdynamics": lambda d, c, s, e: Mmdynamics(d, c, s),
    "LMVCAT": lambda d, c, s, e: LMVCAT(d, c, s),
    "UVaT": lambda d, c, s, e: UVaT(d, c, s),
}


def create_baseline(
    name: str,
    input_dims: list[int],
    class_emb: torch.Tensor,
    seen: torch.Tensor,
    external: ExternalSemantics | None = None,
) -> Baseline:
    """Build baseline `name` (one of BASELINES) for modalities of `input_dims` features,
    class semantic vectors class_emb (N, d_s) and seen (M, N), the classes each modality
    saw in training; `external`: the external class names' vectors (DSECN needs them).
    Returned in eval mode, so a state_dict loaded into it predicts at once."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINES)}")
    if class_emb.ndim != 2:
        raise ValueError(f"class_emb must be (classes, d_s), got {tuple(class_emb.shape)}")
    if seen.shape != (len(input_dims), class_emb.shape[0]):
        raise ValueError(
            f"seen must be (modalities={len(input_dims)}, classes={class_emb.shape[0]}), got {tuple(seen.shape)}"
        )
    return _REGISTRY[name](list(input_dims), class_emb, seen, external).eval()


__all__ = [
    "BASELINES", "CALIBRATABLE", "NEEDS_EXTERNAL", "Baseline", "BaselineOutput", "ExternalSemantics",
    "create_baseline", "fit_margins", "head_noun_taxonomy",
]
