"""`cscf run` from media files: extraction (tiny random CLIP/CLAP), training, evaluation, shard resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from media_fixtures import TINY_CLAP, TINY_CLIP, write_clip, write_config

CLASSES = ["dog barking", "church bells", "car horn", "rain falling"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clips")
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(4):
            path = f"clips/{c}-{i}.mp4"
            (base / "clips").mkdir(exist_ok=True)
            write_clip(base / path, seed=10 * c + i)
            rows.append((f"{c}-{i}", name, path, "test" if i == 3 else "train"))
    pd.DataFrame(rows, columns=["sample_id", "class_name", "path", "split"]).to_csv(base / "manifest.csv", index=False)
    pd.DataFrame({"class_name": CLASSES}).to_csv(base / "classes.csv", index=False)
    return {"base": base, "clip": write_config(TINY_CLIP, base / "tiny-vit.json"),
            "clap": write_config(TINY_CLAP, base / "tiny-htsat.json")}


def _run(media: dict[str, Path], workspace: Path) -> dict:
    from flows.params import ExtractParams, PipelineParams
    from flows.pipeline import cscf

    extract = ExtractParams(clip_model=str(media["clip"]), clip_pretrained=None, clap_model=str(media["clap"]),
                            clap_checkpoint=None, shard_size=4, batch_size=4)
    params = PipelineParams(manifest=str(media["base"] / "manifest.csv"), classes=str(media["base"] / "classes.csv"),
                            extract=extract, workspace=str(workspace), out=str(workspace / "out"), epochs=2)
    return cscf(params)


def test_manifest_run_extracts_trains_and_resumes_one_shard(media, prefect_server, tmp_path):
    first = _run(media, tmp_path)
    assert first["states"]["extract"] == "Completed"
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["modalities"] == ["audio", "video"] and metrics["dataset"] == "manifest"

    folder = tmp_path / "extract" / first["keys"]["extract"]
    shards = sorted(folder.glob("shard-*.parquet"))
    assert len(shards) == 4  # 16 clips in shards of 4
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    content = shards[1].read_bytes()
    shards[1].unlink()

    second = _run(media, tmp_path)
    assert second["states"]["extract"] == "Completed"
    assert second["states"]["features"] == second["states"]["train[CSCF]"] == "Cached"
    after = {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.parquet"))}
    assert [n for n in before if after[n] != before[n]] == [shards[1].name]
    assert shards[1].read_bytes() == content  # the same vectors again
