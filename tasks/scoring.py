"""Scoring one method on the test split: every subset of Table 1, per-sample rows, routing.

CSCF, its ablations and the baselines all go through `evaluate_method`, so they are
scored by the same code; baselines' cache keys depend on this module, not on the
evaluation stage around it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from cscf_model.metrics import acc_mix, accuracy, routing_accuracy, subsets

from .mmhcl_data import MMHCLData

# A method under evaluation: (features per modality, presence (B, M)) ->
# (scores (B, N), dominant modality (B,), DMSS uncertainty (M, B) or None).
Predict = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def cscf_predict(model: torch.nn.Module, fusion: str) -> Predict:
    """CSCF (or an ablation, by `fusion`) as a Predict function."""

    def predict(feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = model(feats, present, fusion=fusion)
        return out.fused, out.dominant, out.u

    return predict


@torch.no_grad()
def evaluate_method(
    predict: Predict, data: MMHCLData
) -> tuple[dict[str, float | None], list[dict[str, Any]], dict[str, float | None]]:
    """Accuracy on every subset (cscf_model.metrics), the per-sample rows, and routing
    accuracies on the subsets that show a sample two or more modalities. An empty subset
    scores None."""
    test, scores, rows, routing = data.test, {}, [], {}
    for sub in subsets(test.seen_by, test.available, data.modalities):
        scores_b, dominant, u = predict([x[sub.rows] for x in test.features], sub.present)
        pred, labels = scores_b.argmax(-1), test.labels[sub.rows]
        scores[sub.name] = accuracy(pred, labels)
        if len(sub.rows) and (sub.present.sum(1) >= 2).all():
            routing[sub.name] = routing_accuracy(dominant, test.seen_by[sub.rows] & sub.present)
        for i, r in enumerate(sub.rows.tolist()):
            rows.append({
                "subset": sub.name,
                "sample_id": test.sample_ids[r],
                "true_class": data.class_names[int(labels[i])],
                "predicted_class": data.class_names[int(pred[i])],
                "dominant": data.modalities[int(dominant[i])],
                "u": None if u is None else u[:, i].tolist(),
            })
    scores["acc_mix"] = acc_mix(scores, data.modalities)
    return scores, rows, routing


def subset_sizes(data: MMHCLData) -> dict[str, int]:
    """Number of test samples in every subset, for the report next to the accuracies."""
    return {s.name: len(s.rows) for s in subsets(data.test.seen_by, data.test.available, data.modalities)}


@torch.no_grad()
def routing_ceiling(model: torch.nn.Module, data: MMHCLData) -> dict[str, float | None]:
    """Accuracy when every multimodal sample is decided by the modalities that saw its
    true class (their logits averaged): what perfect routing would reach with this
    model's per-modality logits. A class no shown modality saw is decided by all of them.
    Unimodal subsets have nothing to route and are left out."""
    test, out = data.test, {}
    for sub in subsets(test.seen_by, test.available, data.modalities):
        if not len(sub.rows) or not (sub.present.sum(1) >= 2).all():
            continue
        logits = model([x[sub.rows] for x in test.features], sub.present).logits  # (M, n, N)
        deciders = sub.present & test.seen_by[sub.rows]
        deciders = torch.where(deciders.any(1, keepdim=True), deciders, sub.present).T[..., None].float()
        fused = (logits * deciders).sum(0) / deciders.sum(0)
        out[sub.name] = accuracy(fused.argmax(-1), test.labels[sub.rows])
    return out


@torch.no_grad()
def modality_alone(model: torch.nn.Module, data: MMHCLData) -> dict[str, float | None]:
    """Each modality alone on the samples that have every modality: the reference that
    fusion has to beat, next to averaging and the routing ceiling."""
    test = data.test
    rows = test.available.all(1).nonzero().squeeze(1)
    out = {}
    for m, name in enumerate(data.modalities):
        shown = torch.eye(len(data.modalities), dtype=torch.bool)[m].expand(len(rows), -1)
        fused = model([x[rows] for x in test.features], shown).fused
        out[name] = accuracy(fused.argmax(-1), test.labels[rows])
    return out
