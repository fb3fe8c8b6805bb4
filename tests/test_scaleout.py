"""Extraction shards as separate task runs: threads and a Dask cluster on 127.0.0.1 write the same Parquet."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from distributed import LocalCluster

from media_fixtures import TINY_CLAP, TINY_CLIP, write_clip, write_config

SHARDS = 3


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clips")
    (base / "clips").mkdir()
    rows = []
    for i in range(2 * SHARDS):
        write_clip(base / f"clips/{i}.mp4", seed=i)
        rows.append((f"s{i}", f"class {i % 2}", f"clips/{i}.mp4"))
    pd.DataFrame(rows, columns=["sample_id", "class_name", "path"]).to_csv(base / "manifest.csv", index=False)
    pd.DataFrame({"class_name": ["class 0", "class 1"]}).to_csv(base / "classes.csv", index=False)
    return {"base": base, "clip": write_config(TINY_CLIP, base / "tiny-vit.json"),
            "clap": write_config(TINY_CLAP, base / "tiny-htsat.json")}


@pytest.fixture(scope="module")
def cluster():
    """An existing Dask cluster: one in-process worker, reached over TCP on 127.0.0.1 only."""
    from flows.pipeline import LOCAL_CLUSTER

    with LocalCluster(n_workers=1, threads_per_worker=2, **LOCAL_CLUSTER) as c:
        yield c


def _extract(media: dict[str, Path], workspace: Path, **runner: str) -> tuple[Path, str, dict[str, str]]:
    """Run the extraction stage flow: the extraction folder, the stage's final state, and the
    final states of the shard task runs by name."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from flows.params import ExtractParams, PipelineParams
    from flows.stage_flows import extract

    settings = ExtractParams(clip_model=str(media["clip"]), clip_pretrained=None, clap_model=str(media["clap"]),
                             clap_checkpoint=None, shard_size=2, batch_size=2)
    params = PipelineParams(manifest=str(media["base"] / "manifest.csv"), classes=str(media["base"] / "classes.csv"),
                            extract=settings, workspace=str(workspace), **runner)
    state = extract(params, return_state=True)
    summary = state.result()
    with get_client(sync_client=True) as client:
        parent: UUID = state.state_details.flow_run_id
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.id for c in children])))
    shard_runs = {run.name: run.state.name for run in runs} if children else {}
    return workspace / "extract" / summary["keys"]["extract"], summary["states"]["extract"], shard_runs


def _dask_tasks(cluster: LocalCluster) -> dict[str, int]:
    """Tasks the cluster's scheduler has seen finish, by name."""
    return {name: prefix.state_counts["memory"] for name, prefix in cluster.scheduler.task_prefixes.items()}


def test_dask_and_threads_write_identical_shards(media, cluster, prefect_server, tmp_path):
    threads, thread_state, thread_runs = _extract(media, tmp_path / "threads")
    before = _dask_tasks(cluster)
    dask, dask_state, dask_runs = _extract(media, tmp_path / "dask", task_runner="dask",
                                           dask_address=cluster.scheduler_address)

    assert thread_state == dask_state == "Completed"
    assert thread_runs == dask_runs == {f"extract_shard-{i}": "Completed" for i in range(SHARDS)}
    assert before == {} and _dask_tasks(cluster) == {"extract_shard_task": SHARDS}
    assert threads.name == dask.name  # the task runner is not part of the cache key
    shards = sorted(p.name for p in threads.glob("shard-*.parquet"))
    assert shards == [f"shard-{i:05d}.parquet" for i in range(SHARDS)]
    assert sorted(p.name for p in dask.glob("shard-*.parquet")) == shards
    for name in shards:
        assert (threads / name).read_bytes() == (dask / name).read_bytes(), name

    content = (dask / shards[1]).read_bytes()
    (dask / shards[1]).unlink()
    again = _extract(media, tmp_path / "dask", task_runner="dask")  # a temporary cluster of its own
    assert again == (dask, "Completed", {"extract_shard-1": "Completed"})
    assert (dask / shards[1]).read_bytes() == content
    assert _extract(media, tmp_path / "dask", task_runner="dask") == (dask, "Cached", {})  # no shard task
