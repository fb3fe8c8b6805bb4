"""`cscf benchmark` end to end on the tiny dataset: per-seed metrics, report, figures, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_data import write_dataset


@pytest.fixture(scope="module")
def bench(prefect_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from flows.cli import main

    features, classes = write_dataset(tmp_path_factory.mktemp("tiny"))
    root = tmp_path_factory.mktemp("bench")
    argv = ["benchmark", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video",
            "--seeds", "0,1", "--methods", "TMC,ZLA", "--epochs", "3",
            "--out", str(root / "out"), "--workspace", str(root / "ws")]
    assert main(argv) == 0
    return root, argv


def test_writes_contract_metrics_per_seed_with_every_method(bench) -> None:
    root, _ = bench
    for seed in (0, 1):
        metrics = json.loads((root / "out" / f"seed-{seed}" / "metrics.json").read_text())
        assert metrics["seed"] == seed
        assert set(metrics["methods"]) == {"B", "B+O", "B+O+D", "B+O+D+C", "B+O+R+C", "CSCF", "CSCF (paper)",
                                           "TMC", "ZLA", "ZLA + cal"}
        assert {"dmss_routing_accuracy", "seen_unseen", "CSCF_uncalibrated"} <= set(metrics["diagnostics"])


def test_report_has_mean_and_std_over_seeds_calibration_and_figures(bench) -> None:
    root, _ = bench
    report = (root / "out" / "report.md").read_text()
    seeds = [json.loads((root / "out" / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    tmc = [m["methods"]["TMC"]["acc_mix"] for m in seeds]
    mean, std = sum(tmc) / 2, abs(tmc[0] - tmc[1]) / 2 ** 0.5
    assert f"{mean:.2f} ± {std:.2f}" in report
    assert "| CSCF (margin 0) " in report and "| ZLA + cal " in report and "## Unseen classes" in report
    for png in ("figure4_topk.png", "figure7_uncertainty.png", "seen_unseen.png"):
        assert f"]({png})" in report and (root / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_adding_a_method_runs_only_that_method(bench, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.benchmark import benchmark
    from flows.params import PipelineParams

    root, argv = bench
    params = PipelineParams(features=argv[2], classes=argv[4], modalities=["audio", "video"], epochs=3,
                            workspace=str(root / "ws"))
    result = benchmark(params, seeds=[0], methods=["TMC", "ZLA", "DSECN"], out=str(root / "out2"))
    states = result["states"][0]
    assert states["baselines[DSECN]"] == "Completed"
    assert all(state == "Cached" for name, state in states.items() if name != "baselines[DSECN]")
