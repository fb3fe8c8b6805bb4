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

from . import catalog
from .evaluate import SEEN_UNSEEN_PNG
from .figures import plot_topk_sweep, plot_uncertainty, topk_sweep, uncertainty_samples
from .mmhcl_data import load_mmhcl
from .report import ABLATION, SEEN_UNSEEN, TABLE1, TABLE2, markdown_table


def seed_metrics(workspace: Path, evaluate_key: str, baseline_keys: dict[str, str]) -> dict[str, Any]:
    """CSCF's metrics of one seed with every baseline's scores added under `methods`."""
    metrics = json.loads(catalog.stage_output(workspace, "evaluate", evaluate_key, ".metrics.json").read_text())
    for method, key in baseline_keys.items():
        metrics["methods"][method] = json.loads(
            catalog.stage_output(workspace, "baselines", key, ".metrics.json").read_text()
        )["scores"]
    return metrics


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def render_benchmark(per_seed: dict[int, dict[str, Any]], figures: dict[str, str], command: str) -> str:
    """report.md: Tables 1 and 2 as mean ± std over seeds, routing accuracy, figures."""
    runs = list(per_seed.values())
    methods = list(runs[0]["methods"])
    cell = lambda m, k: _mean_std([r["methods"][m][k] for r in runs])  # noqa: E731
    uncalibrated = ["CSCF (margin 0)", *(_mean_std([r["diagnostics"]["CSCF_uncalibrated"][k] for r in runs]) for k in TABLE1)]
    t1 = markdown_table(["Method", *TABLE1], [[m, *(cell(m, k) for k in TABLE1)] for m in methods] + [uncalibrated])
    by_modality = [r["diagnostics"]["seen_unseen"] for r in runs]
    su = markdown_table(
        ["Modality", *(label for _, label in SEEN_UNSEEN)],
        [[m, *(_mean_std([d[m][k] for d in by_modality]) for k, _ in SEEN_UNSEEN)] for m in by_modality[0]],
    )
    t2 = markdown_table(["Model", *TABLE2], [[label, *(cell(m, k) for k in TABLE2)] for m, label in ABLATION])
    routing = _mean_std([r["diagnostics"]["dmss_routing_accuracy"] for r in runs])
    a, b = runs[0]["modalities"]
    pictures = "\n".join(f"![{name}]({path})" for name, path in figures.items())
    return f"""# CSCF benchmark: {runs[0]['dataset']}, seeds {', '.join(map(str, per_seed))}

Command: `{command}`

Modality A = `{a}`, modality B = `{b}`. Top-1 accuracy (%) over all classes on the test
split, mean ± standard deviation over seeds. Per-seed numbers: `seed-N/metrics.json`.

## Table 1: CSCF, ablations and baselines

{t1}

## Table 2: ablation (B = baseline, O = OSRS, D = DMSS, C = CSMF)

{t2}

DMSS routing accuracy (bimodal test samples whose dominant modality saw the true class): {routing}

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
    data = load_mmhcl(workspace, keys["features"], keys["split"], keys["class_embeddings"])
    state = torch.load(catalog.stage_output(workspace, "train", keys["train[CSCF]"], ".pt"), weights_only=False)
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
