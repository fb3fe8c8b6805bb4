"""Scoring one method on the test split: every Table 1 subset, per-sample rows, DMSS routing.

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
def evaluate_method(predict: Predict, data: MMHCLData) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, float]]:
    """Accuracy on every Table 1 subset, the per-sample rows, and DMSS routing accuracies."""
    test, scores, rows, routing = data.test, {}, [], {}
    for sub in subsets(test.seen_by, test.available):
        scores_b, dominant, u = predict([x[sub.rows] for x in test.features], sub.present)
        pred, labels = scores_b.argmax(-1), test.labels[sub.rows]
        scores[sub.name] = accuracy(pred, labels)
        if sub.present.all() and len(sub.rows):
            routing[sub.name] = routing_accuracy(dominant, test.seen_by[sub.rows])
        for i, r in enumerate(sub.rows.tolist()):
            rows.append({
                "subset": sub.name,
                "sample_id": test.sample_ids[r],
                "true_class": data.class_names[int(labels[i])],
                "predicted_class": data.class_names[int(pred[i])],
                "dominant": data.modalities[int(dominant[i])],
                "u_a": None if u is None else float(u[0, i]),
                "u_b": None if u is None else float(u[1, i]),
            })
    scores["acc_mix"] = acc_mix(scores)
    return scores, rows, routing
