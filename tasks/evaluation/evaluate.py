"""Evaluation stage: Table 1 subsets for every method, per-sample predictions, report.

B+O and B+O+D are evaluated with CSCF's trained weights: eq. 10 does not involve the
fusion, so the three share one training and differ only at inference (as in the
paper's Table 2, where modules are added to one model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cscf_model import CSCF, Encoded, model_from_checkpoint

from tasks.store import catalog
from tasks.training.mmhcl_data import MMHCLData, load_mmhcl
from tasks.store.provenance import provenance
from tasks.evaluation.report import render_report
from tasks.evaluation.scoring import (
    cscf_scorer, encode_test, evaluate_method, modality_alone, routing_by_pattern, routing_ceiling, subset_sizes,
    with_method,
)
from tasks.evaluation.seen_unseen import plot_seen_unseen, seen_unseen_curves, seen_unseen_diagnostics
from tasks.training.validation import cscf_checkpoint

# method name -> (trained model it uses, fusion and router at inference; None: as the model's config).
# The ablations share CSCF's weights: D is the paper's DMSS, R the learned router (issue 12),
# C the class-similarity fusion; CSCF, the project's default, is B+O+R.
METHODS = {
    "B": ("B", None, None),
    "B+O": ("CSCF", "mean", "dmss"),
    "B+O+D": ("CSCF", "dominant", "dmss"),
    "B+O+D+C": ("CSCF", "csmf", "dmss"),
    "B+O+R+C": ("CSCF", "csmf", "gate"),
    "CSCF": ("CSCF", None, None),
    "CSCF (paper)": ("CSCF (paper)", None, None),
}
SEEN_UNSEEN_PNG = "seen_unseen.png"  # the report links the figure by this name, next to it in --out


def _uncalibrated_scores(model: CSCF, encoded: Encoded, data: MMHCLData) -> dict[str, float]:
    """Table 1 scores of the full model with its calibration margins set to 0."""
    margin = model.margin.clone()
    try:
        model.margin.zero_()
        return evaluate_method(cscf_scorer(model, encoded), data)[0]
    finally:
        model.margin.copy_(margin)


def _cscf_diagnostics(
    model: CSCF, encoded: Encoded, data: MMHCLData, workspace: Path, key: str, margins_by_rule: dict[str, list[float]]
) -> dict[str, Any]:
    """What the report shows next to CSCF's rows: the routing ceiling, each modality alone,
    subset sizes, Table 1 without calibration, and the seen/unseen curves (also drawn) with
    the operating point of every calibration rule training chose a margin by."""
    curves = seen_unseen_curves(encoded, data)
    seen_unseen = seen_unseen_diagnostics(model, data, curves, margins_by_rule)
    plot_seen_unseen(curves, seen_unseen, catalog.stage_output(workspace, "evaluate", key, ".seen_unseen.png"))
    return {
        "routing_ceiling": routing_ceiling(model, encoded, data),
        "modality_alone": modality_alone(model, encoded, data),
        "subset_sizes": subset_sizes(data),
        "CSCF_uncalibrated": _uncalibrated_scores(model, encoded, data),
        "seen_unseen": seen_unseen,
    }


def seen_classes(data: MMHCLData) -> dict[str, Any]:
    """metrics.json's `classes`: `seen` per modality, `all` classes, and `A_seen`/`B_seen` with two modalities."""
    seen = {m: [c for c, s in zip(data.class_names, row) if s] for m, row in zip(data.modalities, data.seen.tolist())}
    letters = {"A_seen": seen[data.modalities[0]], "B_seen": seen[data.modalities[1]]} if len(seen) == 2 else {}
    return {**letters, "seen": seen, "all": list(data.class_names)}


def build_evaluation(
    workspace: Path,
    key: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    trained: dict[str, str],
    dataset: str,
    seed: int,
    validation_key: str | None = None,
) -> None:
    """Write `<key>.metrics.json` (CONTRACTS section 3), `<key>.predictions.parquet`,
    `<key>.report.md` and `<key>.seen_unseen.png`.

    `trained` maps a trained model name ("B", "CSCF", "CSCF (paper)") to its training stage key;
    with `validation_key` (the validate stage's), CSCF and the ablations on its weights are scored
    with the settings chosen on validation data, and diagnostics `validation_choices` holds that
    stage's record (tasks.training.validation.validation_record). CSCF is
    also scored with its calibration margins set to 0 (diagnostics `CSCF_uncalibrated`),
    so the report shows Table 1 with and without calibration from one trained model.
    Diagnostics also carry `router_routing_accuracy` (CSCF's own router: the learned one
    unless `cscf_router` says "dmss") next to `dmss_routing_accuracy`, and
    `routing_by_pattern`: per `all[<who>]` subset, CSCF's routing accuracy, accuracy,
    routing ceiling and number of test samples (scoring.routing_by_pattern).
    """
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key, parts=("test",))
    paths = {name: catalog.stage_output(workspace, "train", k, ".pt") for name, k in trained.items()}
    paths["CSCF"] = cscf_checkpoint(workspace, trained["CSCF"], validation_key)
    states = {name: torch.load(path, weights_only=True) for name, path in paths.items()}
    models = {name: model_from_checkpoint(state).eval() for name, state in states.items()}
    chosen = states["CSCF"].get("validation")
    margins_by_rule = states.pop("CSCF").get("margins_by_rule", {})
    del states
    methods, diagnostics = {}, {}
    predictions = catalog.stage_output(workspace, "evaluate", key, ".predictions.parquet")
    # Each method's rows are written as soon as it is scored (at 13x VGGSound the rows of all
    # seven hold GBs), the models taken in METHODS' order so that the rows are in that order.
    with catalog.batch_writer(predictions, catalog.PREDICTIONS) as write:
        for model_name in dict.fromkeys(name for name, _, _ in METHODS.values()):
            model = models.pop(model_name)
            # The model's logits (and gate logits) of every test sample, computed once: its methods
            # and the subsets differ only in the presence masks and fusion applied to them.
            encoded = encode_test(model, data)
            for method, (name, fusion, router) in METHODS.items():
                if name != model_name:
                    continue
                scores, rows, routing = evaluate_method(cscf_scorer(model, encoded, fusion, router), data)
                methods[method] = scores
                write(with_method(rows, method))
                del rows
                for name, who in (("dmss", "B+O+D"), ("router", "CSCF")):
                    if method == who:  # routing accuracy of the paper's DMSS and of CSCF's own router
                        diagnostics[f"{name}_routing_accuracy"] = routing.get("all")
                        diagnostics.update({f"{name}_routing_accuracy_{k}": v for k, v in routing.items()
                                            if k not in ("all", "A_all+B_all")})
                if method == "CSCF":
                    cscf_routing = routing
                    diagnostics["cscf_router"] = model.config.router  # who routes for CSCF: "gate" (learned) or "dmss"
            if model_name == "CSCF":
                diagnostics.update(_cscf_diagnostics(model, encoded, data, workspace, key, margins_by_rule))
                diagnostics["routing_by_pattern"] = routing_by_pattern(
                    methods["CSCF"], cscf_routing, diagnostics["routing_ceiling"], diagnostics["subset_sizes"])
            del encoded  # 0.4 GB per model at 1x VGGSound: one at a time
    if chosen is not None:
        diagnostics["validation_choices"] = chosen
    methods = {m: methods[m] for m in METHODS}
    metrics = {
        "dataset": dataset,
        "modalities": data.modalities,
        "seed": seed,
        "classes": seen_classes(data),
        "methods": methods,
        "diagnostics": diagnostics,
        "provenance": provenance(workspace, embeddings_key),
    }
    catalog.write_text(render_report(metrics), catalog.stage_output(workspace, "evaluate", key, ".report.md"))
    catalog.write_json(metrics, catalog.stage_output(workspace, "evaluate", key, ".metrics.json"))


def publish(workspace: Path, key: str, out_dir: Path) -> dict[str, Path]:
    """Copy one evaluation's metrics.json, report.md and figure into the user's --out folder."""
    outputs = ((".metrics.json", "metrics.json"), (".report.md", "report.md"), (".seen_unseen.png", SEEN_UNSEEN_PNG))
    return {name: catalog.copy_file(catalog.stage_output(workspace, "evaluate", key, suffix), Path(out_dir) / name)
            for suffix, name in outputs}
