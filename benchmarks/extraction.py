"""Extraction throughput: the whole stage against the bare encoder forward pass.

The stage decodes media with PyAV, preprocesses, encodes and writes Parquet shards;
the bare figure is only the CLIP image and CLAP audio forward passes on the same,
already preprocessed inputs, in the same batches, in the same process. Their ratio
says how much the stage's own work (decoding, threads, writing) costs on top of the
models. The encoders are the paper's architectures (ViT-B-32, HTSAT-tiny) with random
weights, which cost the same time as trained ones and need no download.

    python -m benchmarks.extraction [--full]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from benchmarks import REPO_ROOT
from tasks.ingest.extract import AUDIO, VIDEO, ExtractSettings, extract_features, modality_pipeline
from tasks.encoders.media_encoders import AudioEncoderSpec, ImageEncoderSpec

# The clip writer of the tests, imported as pytest does: a third-party wheel in the
# environment ships a top-level `tests` package that hides ours.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from media_fixtures import write_clip  # noqa: E402


def _timed(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - began


def _bare_forward(settings: ExtractSettings, files: list[Path]) -> Callable[[], None]:
    """The encoder forward passes alone over `files`, with their inputs prepared now."""
    pipelines = [modality_pipeline(name, settings) for name in settings.modalities]
    inputs = [[pipeline.load(path) for path in files] for pipeline in pipelines]
    size = settings.batch_size

    def forward() -> None:
        for pipeline, items in zip(pipelines, inputs):
            for start in range(0, len(items), size):
                pipeline.encode(items[start : start + size])

    return forward


def run(full: bool = False) -> dict[str, float]:
    """Clips per second of the extraction stage and of the bare forward pass, and their ratio.

    Each is timed `repeats` times, alternating, and the best time kept, so that other
    load on the machine distorts the ratio as little as possible. On CPU both run with
    one intra-op thread: with more, OpenMP barriers stall whenever the cores are shared
    (with the decoding threads or other processes) and both timings swing by 2x.
    """
    clips, repeats = (48, 3) if full else (8, 2)
    settings = ExtractSettings(
        image=ImageEncoderSpec("ViT-B-32", None),
        audio=AudioEncoderSpec("HTSAT-tiny", None),
        modalities=(VIDEO, AUDIO),
        batch_size=8,
        shard_size=16,
        progress=False,
    )
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    try:
        return _measure(clips, repeats, settings)
    finally:
        torch.set_num_threads(threads)


def _measure(clips: int, repeats: int, settings: ExtractSettings) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "media"
        root.mkdir()
        files = [
            write_clip(root / f"clip{i}.mp4", seed=i, seconds=4.0, fps=25, size=224, audio_rate=44100)
            for i in range(clips)
        ]
        manifest = Path(tmp) / "manifest.csv"
        pd.DataFrame(
            {"sample_id": [f.stem for f in files], "class_name": "c", "path": [f.name for f in files]}
        ).to_csv(manifest, index=False)
        bare = _bare_forward(settings, files)
        bare()  # builds and warms both encoders outside the timings
        stage_s, bare_s = float("inf"), float("inf")
        for k in range(repeats):
            stage_s = min(
                stage_s, _timed(lambda: extract_features(manifest, root, settings, Path(tmp) / f"out{k}"))
            )
            bare_s = min(bare_s, _timed(bare))
    return {
        "extraction_clips_per_s": clips / stage_s,
        "bare_forward_clips_per_s": clips / bare_s,
        "extraction_ratio": bare_s / stage_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more clips (slower, steadier figures)")
    print(json.dumps(run(parser.parse_args().full), indent=2))


if __name__ == "__main__":
    main()
