"""The paper's evaluation subsets (Table 1, appendix C) and the DMSS routing diagnostic.

Two modalities, A (index 0) and B (index 1). A test sample belongs to a class seen by
A (A_s classes) or by B (B_s classes); a subset fixes which modalities are shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUBSETS = ("A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s", "A_all+B_all")
MIX = ("A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s")  # acc_mix averages these


@dataclass
class Subset:
    name: str
    rows: torch.Tensor  # (n,) indices into the test set
    present: torch.Tensor  # (n, 2) which modalities the model is shown


def subsets(seen_by: torch.Tensor, available: torch.Tensor) -> list[Subset]:
    """Table 1's subsets of a test set.

    seen_by (n,): 0 if the sample's class was seen by A in training, 1 if by B.
    available (n, 2): which modalities the sample actually has.
    """
    a, b = available[:, 0], available[:, 1]
    only = lambda m: torch.tensor([m == 0, m == 1]).expand(len(seen_by), 2)  # noqa: E731
    both = torch.ones(len(seen_by), 2, dtype=torch.bool)
    spec = {
        "A_s": (a & (seen_by == 0), only(0)),
        "B_s": (b & (seen_by == 1), only(1)),
        "A_u": (a & (seen_by == 1), only(0)),
        "B_u": (b & (seen_by == 0), only(1)),
        "A_s+B_u": (a & b & (seen_by == 0), both),
        "A_u+B_s": (a & b & (seen_by == 1), both),
        "A_all+B_all": (a & b, both),
    }
    return [
        Subset(name, rows.nonzero().squeeze(1), present[rows]) for name, (rows, present) in spec.items()
    ]


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent over the full label space; NaN for an empty subset."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * float((pred == labels).float().mean())


def acc_mix(scores: dict[str, float]) -> float:
    """Mean of the six mixed-scenario subsets (Table 1, 'Real-world Scenarios')."""
    return sum(scores[k] for k in MIX) / len(MIX)


def routing_accuracy(dominant: torch.Tensor, seen_by: torch.Tensor) -> float:
    """Percent of bimodal samples whose dominant modality is the one that saw the true class."""
    return accuracy(dominant, seen_by)
