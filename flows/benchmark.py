"""The `cscf-benchmark` flow: CSCF, its ablations and the seven baselines over several seeds.

Each (method, seed) is its own cached stage, so adding a seed or a method runs only
what is new; everything upstream is shared with `cscf` runs of the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cscf_model.baselines import BASELINES
from tasks.store import catalog
from tasks.evaluation.benchmark import make_figures, render_benchmark, seed_metrics

from .params import PipelineParams
from .pipeline import Wiring


@flow(name="cscf-benchmark", log_prints=False)
def benchmark(
    params: PipelineParams = PipelineParams(),
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (Prefect parameters are copied per run)
    methods: list[str] = list(BASELINES),  # noqa: B006
    out: str = "benchmark",
    command: str = "cscf benchmark",
) -> dict[str, Any]:
    """Write `out/seed-N/metrics.json` per seed, `out/report.md` and the figures."""
    unknown = sorted(set(methods) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    out_dir, per_seed, states = Path(out), {}, {}
    first: Wiring | None = None
    for seed in seeds:
        wiring = Wiring(params.model_copy(update={"seed": seed}))
        evaluate_key = wiring.evaluate
        baseline_keys = {method: wiring.baseline(method) for method in methods}
        per_seed[seed] = seed_metrics(Path(params.workspace), evaluate_key, baseline_keys)
        catalog.write_json(per_seed[seed], out_dir / f"seed-{seed}" / "metrics.json")
        states[seed] = wiring.summary()["states"]
        first = first or wiring
    assert first is not None
    figures = make_figures(Path(params.workspace), first.summary()["keys"], out_dir)
    catalog.write_text(render_benchmark(per_seed, figures, command), out_dir / "report.md")
    get_run_logger().info("benchmark written to %s", out_dir)
    return {"states": states, "report": str(out_dir / "report.md")}
