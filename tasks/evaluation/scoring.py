"""Scoring one method on the test split: every subset of Table 1, per-sample rows, routing.

CSCF, its ablations and the baselines all go through `evaluate_method`, so they are
scored by the same code; baselines' cache keys depend on this module, not on the
evaluation stage around it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from cscf_model import CSCF, Encoded
from cscf_model.metrics import acc_mix, accuracy, gzsl_scores, routing_accuracy, seen_sets_coincide, subsets

from tasks.store import catalog
from tasks.training.mmhcl_data import MMHCLData

# A method as a function of the features: (features per modality, presence (B, M)) ->
# (scores (B, N), dominant modality (B,), DMSS uncertainty (M, B) or None).
Output = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
Predict = Callable[[list[torch.Tensor], torch.Tensor], Output]
# A method bound to the test set: (test rows (B,), presence (B, M)) -> Output. Subsets show
# the same samples under different presence masks, so what does not depend on the mask is
# computed once per test set, not once per subset and method.
Scorer = Callable[[torch.Tensor, torch.Tensor], Output]

CHUNK = 8192  # test rows scored at a time: bounds memory whatever the test set's size


def cscf_predict(model: torch.nn.Module, fusion: str | None = None, router: str | None = None) -> Predict:
    """CSCF as a Predict function: as configured, or an ablation by `fusion` / `router`."""

    def predict(feats: list[torch.Tensor], present: torch.Tensor) -> Output:
        out = model(feats, present, fusion=fusion, router=router)
        return out.fused, out.dominant, out.u

    return predict


def on_test(predict: Predict, data: MMHCLData) -> Scorer:
    """A Predict function as a Scorer: the features of the rows asked for, every time."""
    return lambda rows, present: predict([x[rows] for x in data.test.features], present)


def encode_test(model: CSCF, data: MMHCLData) -> Encoded:
    """CSCF.encode_for_scoring of every test sample (its modalities' mean logits, gate logits
    and DMSS entropies)."""
    return model.encode_for_scoring(data.test.features)


def cscf_scorer(model: CSCF, encoded: Encoded, fusion: str | None = None, router: str | None = None) -> Scorer:
    """CSCF (or an ablation by `fusion` / `router`) on the test set `encoded` by encode_test:
    only CSCF.fuse runs per subset."""

    def score(rows: torch.Tensor, present: torch.Tensor) -> Output:
        out = model.fuse(encoded.rows(rows), present, fusion=fusion, router=router)
        return out.fused, out.dominant, out.u

    return score


def _chunks(rows: torch.Tensor, present: torch.Tensor) -> zip:
    return zip(rows.split(CHUNK), present.split(CHUNK))


def _predicted(score: Scorer, rows: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Predicted class (B,), dominant modality (B,) and u (M, B) or None, CHUNK rows at a time."""
    outs = [score(r, p) for r, p in _chunks(rows, present)]
    u = None if outs[0][2] is None else torch.cat([o[2] for o in outs], 1)
    return torch.cat([o[0].argmax(-1) for o in outs]), torch.cat([o[1] for o in outs]), u


# The per-sample rows of `evaluate_method`: the predictions schema less the method's name.
ROWS = pa.schema([f for f in catalog.PREDICTIONS if f.name != "method"])


@torch.no_grad()
def evaluate_method(
    score: Scorer, data: MMHCLData
) -> tuple[dict[str, float | None], pa.Table, dict[str, float | None]]:
    """Accuracy on every subset (cscf_model.metrics), the per-sample rows (ROWS), and routing
    accuracies on the subsets that show a sample two or more modalities. An empty subset
    scores None. When every modality saw the same classes (the AV-GZSL protocol), the scores
    also have `S`, `U` and `H` (cscf_model.metrics.gzsl_scores) of the `all` subset: the test
    samples that show every modality, all of them shown. The rows are built column by
    column: 50 thousand test samples x 4 methods made 200 thousand Python dicts before."""
    test, scores, parts, routing, gzsl = data.test, {}, [], {}, {}
    ids, names = np.asarray(test.sample_ids, dtype=object), np.asarray(data.class_names, dtype=object)
    modalities = np.asarray(data.modalities, dtype=object)
    for sub in subsets(test.seen_by, test.available, data.modalities):
        pred, dominant, u = _predicted(score, sub.rows, sub.present)
        labels = test.labels[sub.rows]
        scores[sub.name] = accuracy(pred, labels)
        if sub.name == "all" and seen_sets_coincide(data.seen):
            gzsl = gzsl_scores(pred, labels, data.seen[0])
        if len(sub.rows) and (sub.present.sum(1) >= 2).all():
            routing[sub.name] = routing_accuracy(dominant, test.seen_by[sub.rows] & sub.present)
        n = len(sub.rows)
        parts.append(pa.table({
            "subset": pa.array(np.full(n, sub.name, dtype=object), pa.string()),
            "sample_id": pa.array(ids[sub.rows.numpy()], pa.string()),
            "true_class": pa.array(names[labels.numpy()], pa.string()),
            "predicted_class": pa.array(names[pred.numpy()], pa.string()),
            "dominant": pa.array(modalities[dominant.numpy()], pa.string()),
            "u": pa.nulls(n, ROWS.field("u").type) if u is None else catalog.vector_column(u.T.reshape(n, len(u)).numpy()),
        }, schema=ROWS))
    scores["acc_mix"] = acc_mix(scores, data.modalities)
    scores |= gzsl
    return scores, pa.concat_tables(parts) if parts else ROWS.empty_table(), routing


def with_method(rows: pa.Table, method: str) -> pa.Table:
    """`evaluate_method`'s rows of one method as predictions rows (catalog.PREDICTIONS)."""
    return rows.add_column(0, "method", pa.array(np.full(len(rows), method, dtype=object), pa.string()))


def subset_sizes(data: MMHCLData) -> dict[str, int]:
    """Number of test samples in every subset, for the report next to the accuracies."""
    return {s.name: len(s.rows) for s in subsets(data.test.seen_by, data.test.available, data.modalities)}


@torch.no_grad()
def routing_ceiling(model: CSCF, encoded: Encoded, data: MMHCLData) -> dict[str, float | None]:
    """Accuracy when every multimodal sample is decided by the modalities that saw its
    true class (their logits averaged): what perfect routing would reach with this
    model's per-modality logits. A class no shown modality saw is decided by all of them.
    Unimodal subsets have nothing to route and are left out."""
    test, out = data.test, {}
    for sub in subsets(test.seen_by, test.available, data.modalities):
        if not len(sub.rows) or not (sub.present.sum(1) >= 2).all():
            continue
        preds = []
        for rows, present in _chunks(sub.rows, sub.present):
            logits = model.fuse(encoded.rows(rows), present).logits  # (M, n, N)
            deciders = present & test.seen_by[rows]
            deciders = torch.where(deciders.any(1, keepdim=True), deciders, present).T[..., None].float()
            preds.append(((logits * deciders).sum(0) / deciders.sum(0)).argmax(-1))
        out[sub.name] = accuracy(torch.cat(preds), test.labels[sub.rows])
    return out


def routing_by_pattern(
    scores: dict[str, float | None], routing: dict[str, float | None],
    ceiling: dict[str, float | None], sizes: dict[str, int],
) -> dict[str, dict[str, float | int | None]]:
    """Per seen pattern, one method next to what routing gives it: for every `all[<who>]`
    subset (test samples showing every modality, split by which modalities saw the true
    class), `routing` (its routing accuracy, from evaluate_method), `accuracy` (its score),
    `ceiling` (routing_ceiling) and `samples` (subset_sizes). `all[none]` has no right
    modality to route to: its routing is None."""
    return {k: {"routing": routing.get(k), "accuracy": scores.get(k), "ceiling": ceiling.get(k), "samples": n}
            for k, n in sizes.items() if k.startswith("all[")}


@torch.no_grad()
def modality_alone(model: CSCF, encoded: Encoded, data: MMHCLData) -> dict[str, float | None]:
    """Each modality alone on the samples that have every modality: the reference that
    fusion has to beat, next to averaging and the routing ceiling."""
    test = data.test
    rows = test.available.all(1).nonzero().squeeze(1)
    out = {}
    for m, name in enumerate(data.modalities):
        shown = torch.eye(len(data.modalities), dtype=torch.bool)[m].expand(len(rows), -1)
        pred, _, _ = _predicted(cscf_scorer(model, encoded), rows, shown)
        out[name] = accuracy(pred, test.labels[rows])
    return out
