"""The paper's evaluation subsets (Table 1, appendix C), generalised to M modalities, and
the routing diagnostic.

A test sample's class was seen in training by some set of modalities (`seen_by`, any
pattern: one, several, none); a subset fixes which samples are scored and which of
their modalities the model is shown. CONTRACTS section 3 names them:

- `<m>_s` / `<m>_u`: modality m alone on samples of the classes it saw / did not see;
- `all`: every modality shown, on every sample that has them all, and `all[<who>]`,
  the same split by which modalities saw the true class (`all[audio+video]`, `all[none]`);
- `given[<modalities>]`: samples that have only some of the modalities, shown as they are;
- with two modalities, the paper's names too: A_s, B_s, A_u, B_u, A_s+B_u, A_u+B_s,
  A_all+B_all, with "seen by A" read as "seen by A and not by B" where the sets overlap.

acc_mix is the mean of every `<m>_s`, `<m>_u` and `all[<who>]` that has samples; for two
disjoint modalities those are the paper's six subsets, in the paper's order.

When every modality saw the same classes (the AV-GZSL protocol), `gzsl_scores` adds the
generalized zero-shot figures S, U and H (see there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_SUBSETS = ("A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s", "A_all+B_all")


@dataclass
class Subset:
    name: str
    rows: torch.Tensor  # (n,) indices into the test set
    present: torch.Tensor  # (n, M) which modalities the model is shown


def group_name(modalities: list[str], mask: torch.Tensor) -> str:
    """'audio+video' for a (M,) mask, 'none' when empty."""
    return "+".join(m for m, on in zip(modalities, mask.tolist()) if on) or "none"


def _patterns(masks: torch.Tensor) -> list[torch.Tensor]:
    """The distinct rows of an (n, M) bool matrix, most modalities first (A before B)."""
    rows = sorted({tuple(r) for r in masks.tolist()}, reverse=True)
    return [torch.tensor(r, dtype=torch.bool) for r in rows]


def subsets(seen_by: torch.Tensor, available: torch.Tensor, modalities: list[str]) -> list[Subset]:
    """Every subset of a test set that CONTRACTS section 3 names (see the module docstring).

    seen_by (n, M): which modalities saw each sample's class; available (n, M): which
    modalities each sample has.
    """
    n, n_mod = available.shape
    only = [torch.eye(n_mod, dtype=torch.bool)[m].expand(n, n_mod) for m in range(n_mod)]
    everything = torch.ones(n, n_mod, dtype=torch.bool)
    full = available.all(1)
    spec: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for m, name in enumerate(modalities):
        spec[f"{name}_s"] = (available[:, m] & seen_by[:, m], only[m])
    for m, name in enumerate(modalities):
        spec[f"{name}_u"] = (available[:, m] & ~seen_by[:, m], only[m])
    spec["all"] = (full, everything)
    for who in _patterns(seen_by[full]):
        spec[f"all[{group_name(modalities, who)}]"] = (full & (seen_by == who).all(1), everything)
    for shown in _patterns(available[~full]):
        if shown.any():
            spec[f"given[{group_name(modalities, shown)}]"] = ((available == shown).all(1), shown.expand(n, n_mod))
    if n_mod == 2:
        a_only, b_only = seen_by[:, 0] & ~seen_by[:, 1], seen_by[:, 1] & ~seen_by[:, 0]
        a, b = available[:, 0], available[:, 1]
        spec |= {
            "A_s": (a & a_only, only[0]),
            "B_s": (b & b_only, only[1]),
            "A_u": (a & b_only, only[0]),
            "B_u": (b & a_only, only[1]),
            "A_s+B_u": (full & a_only, everything),
            "A_u+B_s": (full & b_only, everything),
            "A_all+B_all": (full, everything),
        }
    return [Subset(name, rows.nonzero().squeeze(1), present[rows]) for name, (rows, present) in spec.items()]


def mix_keys(scores: dict[str, float | None], modalities: list[str]) -> list[str]:
    """The subsets acc_mix averages: every `<m>_s`, `<m>_u` and `all[<who>]` with samples."""
    keys = [f"{m}_s" for m in modalities] + [f"{m}_u" for m in modalities]
    keys += [k for k in scores if k.startswith("all[")]
    return [k for k in keys if scores.get(k) is not None]


def acc_mix(scores: dict[str, float | None], modalities: list[str]) -> float | None:
    """Mean over `mix_keys` (for two disjoint modalities: Table 1's six mixed subsets)."""
    keys = mix_keys(scores, modalities)
    return sum(scores[k] for k in keys) / len(keys) if keys else None


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-1 accuracy in percent over the full label space; None for an empty subset."""
    if len(labels) == 0:
        return None
    return 100.0 * float((pred == labels).float().mean())


def seen_sets_coincide(seen: torch.Tensor) -> bool:
    """Whether every modality saw the same classes (seen (M, N) bool): the AV-GZSL protocol."""
    return bool((seen == seen[:1]).all())


def gzsl_scores(pred: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor) -> dict[str, float | None]:
    """The generalized zero-shot figures of the AV-GZSL papers (ClipClap-GZSL, AVCA-GZSL):
    `S`, top-1 accuracy (percent, over ALL classes) on the samples of seen classes; `U`, the
    same on the samples of unseen classes; `H` = 2SU / (S + U), 0 when S + U = 0.

    pred, labels (n,): predicted and true class of the samples scored; seen (N,) bool: the
    classes seen in training (the same for every modality under that protocol). The
    evaluation passes the `all` subset: test samples that show every modality, each shown
    all of them, as those papers evaluate with audio and video both present. S or U is
    None when it has no samples, and H then None too.
    """
    seen_class = seen[labels]
    s = accuracy(pred[seen_class], labels[seen_class])
    u = accuracy(pred[~seen_class], labels[~seen_class])
    h = None if s is None or u is None else (2 * s * u / (s + u) if s + u > 0 else 0.0)
    return {"S": s, "U": u, "H": h}


def routing_accuracy(dominant: torch.Tensor, seen_by: torch.Tensor) -> float | None:
    """Percent of samples whose dominant modality is one that saw the true class.

    With overlapping sets any modality that saw the class is a right choice; samples
    whose class no modality saw have no right choice and are left out.
    """
    judged = seen_by.any(1)
    if not judged.any():
        return None
    right = seen_by[torch.arange(len(dominant)), dominant]
    return 100.0 * float(right[judged].float().mean())
