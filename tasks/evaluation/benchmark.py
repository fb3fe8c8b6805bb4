"""Benchmark outputs: per-seed metrics.json with every method, and a report with mean ± std.

The per-seed files follow CONTRACTS section 3; the report adds Table 1 and Table 2 over
seeds, the DMSS routing accuracy and the figures (Figure 4 top-k sweep, Figure 7 u).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from cscf_model import model_from_checkpoint

from tasks.store import catalog
from tasks.evaluation.evaluate import SEEN_UNSEEN_PNG
from tasks.evaluation.figures import plot_topk_sweep, plot_uncertainty, topk_sweep, uncertainty_samples
from tasks.training.mmhcl_data import load_mmhcl
from tasks.evaluation.report import ABLATION, CEILING, SEEN_UNSEEN, markdown_table, modalities_line, table_columns


def seed_metrics(workspace: Path, evaluate_key: str, baseline_keys: dict[str, str]) -> dict[str, Any]:
    """CSCF's metrics of one seed with every baseline's scores added under `methods`:
    `<method>`, and `<method> + cal` for a method the baseline stage also calibrated."""
    metrics = json.loads(catalog.stage_output(workspace, "evaluate", evaluate_key, ".metrics.json").read_text())
    for key in baseline_keys.values():
        metrics["methods"].update(
            json.loads(catalog.stage_output(workspace, "baselines", key, ".metrics.json").read_text())["methods"]
        )
    return metrics


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render_benchmark(per_seed: dict[int, dict[str, Any]], figures: dict[str, str], command: str) -> str:
    """report.md: Tables 1 and 2 as mean ± std over seeds, routing accuracy, figures."""
    runs = list(per_seed.values())
    methods = list(runs[0]["methods"])
    table1, table2 = table_columns(runs[0])
    cell = lambda m, k: _mean_std([r["methods"][m].get(k) for r in runs])  # noqa: E731
    diag = lambda name, k: _mean_std([r["diagnostics"][name].get(k) for r in runs])  # noqa: E731
    extra = [["CSCF (margin 0)", *(diag("CSCF_uncalibrated", k) for k in table1)],
             [CEILING, *(diag("routing_ceiling", k) for k in table1)]]
    t1 = markdown_table(["Method", *table1], [[m, *(cell(m, k) for k in table1)] for m in methods] + extra)
    by_modality = [r["diagnostics"]["seen_unseen"] for r in runs]
    su = markdown_table(
        ["Modality", *(label for _, label in SEEN_UNSEEN)],
        [[m, *(_mean_std([d[m][k] for d in by_modality]) for k, _ in SEEN_UNSEEN)] for m in by_modality[0]],
    )
    t2 = markdown_table(["Model", *table2], [[label, *(cell(m, k) for k in table2)] for m, label in ABLATION])
    routing = {name: _mean_std([r["diagnostics"].get(f"{name}_routing_accuracy") for r in runs]) for name in ("dmss", "router")}
    pictures = "\n".join(f"![{name}]({path})" for name, path in figures.items())
    return f"""# CSCF benchmark: {runs[0]['dataset']}, seeds {', '.join(map(str, per_seed))}

Command: `{command}`

Modalities: {modalities_line(runs[0])}. Top-1 accuracy (%) over all classes on the test
split, mean ± standard deviation over seeds. Per-seed numbers: `seed-N/metrics.json`.

## Table 1: CSCF, ablations and baselines

{t1}

## Table 2: ablation (B = baseline, O = OSRS, D = DMSS, R = learned router, C = CSMF)

{t2}

Routing accuracy (test samples showing every modality whose dominant modality saw the true class):
DMSS {routing['dmss']}, the learned router {routing['router']}; the routing ceiling row of Table 1 is
what perfect routing would reach.

## Unseen classes: each modality alone, with calibrated stacking

`CSCF (margin 0)` in Table 1 is the same trained CSCF with its margins set to 0. Seen /
unseen: one modality alone on test samples of its seen / unseen classes; H: harmonic
mean; AUSUC: area under the seen/unseen curve (percent); cosine rule: training-free.

{su}

## Figures

{pictures}
"""


def make_figures(workspace: Path, keys: dict[str, str], out_dir: Path, max_k: int = 8) -> dict[str, str]:
    """Figure 4 and Figure 7 from one seed's trained CSCF, and that seed's seen/unseen
    curves; returns names -> relative paths."""
    data = load_mmhcl(workspace, keys["features"], keys["split"], keys["class_embeddings"], parts=("test",))
    state = torch.load(catalog.stage_output(workspace, "train", keys["train[CSCF]"], ".pt"), weights_only=True)
    model = model_from_checkpoint(state).eval()
    n_seen = int(data.seen.sum(1).min())
    sweep = topk_sweep(model, data, list(range(1, min(max_k, n_seen) + 1)))
    plot_topk_sweep(sweep, out_dir / "figure4_topk.png")
    plot_uncertainty(uncertainty_samples(model, data), data.modalities, out_dir / "figure7_uncertainty.png")
    catalog.write_json({label: {str(k): v for k, v in by_k.items()} for label, by_k in sweep.items()},
                       out_dir / "figure4_topk.json")
    catalog.copy_file(catalog.stage_output(workspace, "evaluate", keys["evaluate"], ".seen_unseen.png"), out_dir / SEEN_UNSEEN_PNG)
    return {"Figure 4: top-k sweep": "figure4_topk.png", "Figure 7: uncertainty per modality": "figure7_uncertainty.png",
            "Seen/unseen accuracy per modality as the calibration margin moves": SEEN_UNSEEN_PNG}
