"""Evaluation stage: Table 1 subsets for every method, per-sample predictions, report.

B+O and B+O+D are evaluated with CSCF's trained weights: eq. 10 does not involve the
fusion, so the three share one training and differ only at inference (as in the
paper's Table 2, where modules are added to one model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import torch

from cscf_model import model_from_checkpoint
from cscf_model.metrics import acc_mix, accuracy, routing_accuracy, subsets

from . import catalog
from .mmhcl_data import MMHCLData, load_mmhcl
from .report import render_report

# method name -> (trained model it uses, fusion at inference)
METHODS = {"B": ("B", "mean"), "B+O": ("CSCF", "mean"), "B+O+D": ("CSCF", "dominant"), "CSCF": ("CSCF", "csmf")}


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


def build_evaluation(
    workspace: Path,
    key: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    trained: dict[str, str],
    dataset: str,
    seed: int,
) -> None:
    """Write `<key>.metrics.json` (CONTRACTS section 3), `<key>.predictions.parquet`, `<key>.report.md`.

    `trained` maps a trained model name ("B", "CSCF") to its training stage key.
    """
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key)
    models = {
        name: model_from_checkpoint(torch.load(catalog.stage_output(workspace, "train", k, ".pt"), weights_only=False)).eval()
        for name, k in trained.items()
    }
    methods, predictions, diagnostics = {}, [], {}
    for method, (model_name, fusion) in METHODS.items():
        scores, rows, routing = evaluate_method(cscf_predict(models[model_name], fusion), data)
        methods[method] = scores
        predictions += [{"method": method, **r} for r in rows]
        if method == "CSCF":
            diagnostics["dmss_routing_accuracy"] = routing["A_all+B_all"]
            diagnostics.update({f"dmss_routing_accuracy_{k}": v for k, v in routing.items() if k != "A_all+B_all"})
    seen = data.seen
    metrics = {
        "dataset": dataset,
        "modalities": data.modalities,
        "seed": seed,
        "classes": {
            "A_seen": [c for c, s in zip(data.class_names, seen[0]) if s],
            "B_seen": [c for c, s in zip(data.class_names, seen[1]) if s],
        },
        "methods": methods,
        "diagnostics": diagnostics,
    }
    catalog.write_table(pa.Table.from_pylist(predictions, schema=catalog.PREDICTIONS),
                        catalog.stage_output(workspace, "evaluate", key, ".predictions.parquet"), catalog.PREDICTIONS)
    catalog.write_text(render_report(metrics), catalog.stage_output(workspace, "evaluate", key, ".report.md"))
    catalog.write_json(metrics, catalog.stage_output(workspace, "evaluate", key, ".metrics.json"))


def publish(workspace: Path, key: str, out_dir: Path) -> dict[str, Path]:
    """Copy one evaluation's metrics.json and report.md into the user's --out folder."""
    written = {}
    for suffix, name in ((".metrics.json", "metrics.json"), (".report.md", "report.md")):
        text = catalog.stage_output(workspace, "evaluate", key, suffix).read_text()
        written[name] = catalog.write_text(text, Path(out_dir) / name)
    return written
