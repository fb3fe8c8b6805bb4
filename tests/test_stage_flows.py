"""Stage flows share the full flow's cache both ways; a fresh evaluation publishes its artifacts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tiny_data import write_dataset


@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory: pytest.TempPathFactory):
    """`cscf-stage-train` on a fresh workspace, then the full `cscf` flow on the same parameters."""
    from flows import stage_flows
    from flows.params import PipelineParams
    from flows.pipeline import cscf

    root = tmp_path_factory.mktemp("stage-flows")
    features, classes = write_dataset(root / "data")
    params = PipelineParams(features=str(features), classes=str(classes), modalities=["audio", "video"],
                            workspace=str(root / "ws"), out=str(root / "out"), epochs=2)
    trained = stage_flows.train(params)
    full = cscf(params, return_state=True)
    return params, trained, full


def test_stage_flow_runs_only_what_its_stage_needs(runs):
    _, trained, _ = runs
    assert set(trained["states"]) == {"features", "split", "descriptions", "class_embeddings", "train[B]", "train[CSCF]",
                                      "train[CSCF (paper)]"}
    assert set(trained["states"].values()) == {"Completed"}


def test_full_flow_reuses_the_stage_flow_cache(runs):
    _, trained, full = runs
    result = full.result()
    assert result["keys"] == {**trained["keys"], "evaluate": result["keys"]["evaluate"]}
    assert {k: v for k, v in result["states"].items() if k != "evaluate"} == {k: "Cached" for k in trained["states"]}
    assert result["states"]["evaluate"] == "Completed"


def test_stage_flow_after_full_flow_is_all_cache_hits_and_publishes_nothing(runs):
    from flows import stage_flows

    params, _, full = runs
    state = stage_flows.evaluate(params, return_state=True)
    again = state.result()
    assert again["keys"] == full.result()["keys"]
    assert set(again["states"].values()) == {"Cached"}
    assert _artifacts(state.state_details.flow_run_id) == {}


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return {a.key: a for a in asyncio.run(read())}


def test_fresh_evaluation_publishes_report_and_accuracy_artifacts(runs):
    from tasks.stages import ACCURACY_ARTIFACT, REPORT_ARTIFACT, embed_figure

    params, _, full = runs
    artifacts = _artifacts(full.state_details.flow_run_id)
    assert set(artifacts) == {REPORT_ARTIFACT, ACCURACY_ARTIFACT}
    report = artifacts[REPORT_ARTIFACT]
    assert report.type == "markdown"
    out = Path(params.out)
    assert report.data == embed_figure((out / "report.md").read_text(), "seen_unseen.png", out / "seen_unseen.png")
    assert "](data:image/png;base64," in report.data  # the UI cannot reach a file next to report.md
    assert "## Table 1" in report.data and "## Table 2" in report.data
    cscf = json.loads((Path(params.out) / "metrics.json").read_text())["methods"]["CSCF"]
    table = artifacts[ACCURACY_ARTIFACT]
    assert table.type == "table"
    assert {r["subset"]: r["accuracy"] for r in json.loads(table.data)} == {k: round(v, 2) for k, v in cscf.items() if v is not None}
