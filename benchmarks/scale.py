"""Scale: the pipeline's stages on a VGGSound-size (or AudioSet-size) synthetic dataset, time and peak memory each.

The stages run as `cscf run` wires them (flows.pipeline.Wiring, same parameters, same
cache keys), but each in a fresh subprocess of its own, so that its peak resident
memory (VmHWM) is that stage's alone, imports included; Prefect is left
out, it costs the same at every size (the rerun benchmark prices it). The growth table
repeats this at several fractions of the full size (150k training and 50k test clips,
271 classes, 1024-d audio, 512-d video), so that how each stage grows is visible; a
multiple above 1 is AudioSet's size, 527 classes (13: about 2 million training clips).
Training throughput at the largest size up to 1x is benchmarks.train's trainer/bare-loop ratio.

    python -m benchmarks.scale [--fractions 1/16,1/4] [--epochs 2] [--full]
    python -m benchmarks.scale --fractions 1/16,1/4,1,13 --epochs 1   # the growth table to AudioSet size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

from benchmarks import REPO_ROOT

from .scale_data import AUDIO_DIM, VIDEO_DIM, scale_size, write_scale_dataset

DEFAULT_FRACTIONS = (1 / 64, 1 / 16)  # about two minutes on 2 cores; --full about an hour
FULL_FRACTIONS = (1 / 16, 1 / 4, 1.0, 13.0)  # 13: AudioSet size, 20 GB of input and as much in the workspace
DEFAULT_EPOCHS = 2  # per training; the pipeline's default is 50, and time per epoch is what grows


@dataclass(frozen=True)
class StageCost:
    seconds: float
    peak_mb: float


def run_stage_process(stage: str, params: dict[str, Any]) -> tuple[str, StageCost]:
    """Run one stage (tasks.stages.STAGES) in a fresh Python; its key and its cost."""
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--stage-child"], cwd=REPO_ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(json.dumps({"stage": stage, "params": params}))
    seconds = time.perf_counter() - began
    if child.returncode != 0:
        raise RuntimeError(f"stage {stage} exited {child.returncode}:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return result["key"], StageCost(seconds, result["peak_mb"])


def _stage_child() -> None:
    """The subprocess side of `run_stage_process`: build the stage, print its key and peak memory."""
    from tasks.stages import STAGES

    request = json.loads(sys.stdin.read())
    key = STAGES[request["stage"]].run(request["params"])
    print(json.dumps({"key": key, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries the
    parent's peak across fork and exec into it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def measure_pipeline(features: Path, classes: Path, workspace: Path, epochs: int,
                     until: str = "evaluate") -> dict[str, StageCost]:
    """Cost of every stage of `cscf run` up to `until` on these inputs, by stage label (`train[CSCF]`, ...)."""
    from flows.params import LLMParams, PipelineParams
    from flows.pipeline import Wiring

    costs: dict[str, StageCost] = {}

    class Measured(Wiring):
        def call(self, task: Any, refresh: bool = False, **kwargs: Any) -> str:
            label = f"{task.name}[{kwargs['method']}]" if "method" in kwargs else task.name
            key, costs[label] = run_stage_process(task.name, {"workspace": self.params.workspace, **kwargs})
            print(f"scale: {label} {costs[label].seconds:.1f} s, peak {costs[label].peak_mb:.0f} MiB",
                  file=sys.stderr, flush=True)
            return key

    params = PipelineParams(features=str(features), classes=str(classes), workspace=str(workspace),
                            epochs=epochs, device="cpu", llm=LLMParams(mode="offline"))
    getattr(Measured(params), until)
    return costs


def measure(fraction: float, epochs: int, until: str = "evaluate") -> dict[str, StageCost]:
    """Stage costs at `fraction` of the full size, on a dataset generated for it (timed as `generate`),
    up to stage `until` (`measure(1, 1, until="features")`: the features stage alone at 1x)."""
    with tempfile.TemporaryDirectory(prefix="cscf-scale-") as tmp:
        began = time.perf_counter()
        features, classes = write_scale_dataset(Path(tmp) / "data", scale_size(fraction))
        generated = StageCost(time.perf_counter() - began, float("nan"))
        return {"generate": generated, **measure_pipeline(features, classes, Path(tmp) / "workspace", epochs, until)}


def _label(fraction: float) -> str:
    return f"{round(fraction)}x" if fraction >= 1 else f"1/{round(1 / fraction)}"


def growth_table(results: dict[float, dict[str, StageCost]]) -> str:
    """Seconds and peak MiB per stage (rows) at each fraction (columns), as a Markdown table."""
    fractions = list(results)
    head = ["stage"] + [f"{_label(f)} s" for f in fractions] + [f"{_label(f)} MiB" for f in fractions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stage in results[fractions[0]]:
        cells = [f"{results[f][stage].seconds:.1f}" for f in fractions]
        cells += ["" if results[f][stage].peak_mb != results[f][stage].peak_mb else f"{results[f][stage].peak_mb:.0f}"
                  for f in fractions]
        lines.append("| " + " | ".join([stage, *cells]) + " |")
    sizes = ", ".join(f"{_label(f)} = {scale_size(f).train} train / {scale_size(f).test} test clips, "
                      f"{scale_size(f).classes} classes" for f in fractions)
    return "\n".join(lines) + f"\n\nAudio {AUDIO_DIM}-d, video {VIDEO_DIM}-d; {sizes}."


def _slug(stage: str) -> str:
    return stage.replace("[", "_").replace("]", "").replace(" (paper)", "_paper").replace(" ", "_").lower()


def reference_fraction(fractions: Iterable[float]) -> float:
    """The size whose figures carry no suffix: the largest up to VGGSound's (1x)."""
    return max((f for f in fractions if f <= 1), default=min(fractions))


def _tag(fraction: float, reference: float) -> str:
    """Figure-name suffix: none at the reference size, `_at_1_16` below 1x, `_at_13x` above."""
    if fraction == reference:
        return ""
    return f"_at_{round(fraction)}x" if fraction > 1 else f"_at_1_{round(1 / fraction)}"


def figures(results: dict[float, dict[str, StageCost]], train_ratio: float) -> dict[str, float]:
    """Flat `scale_*` figures: the reference size's stages (reference_fraction), and each other size's (growth)."""
    reference = reference_fraction(results)
    out: dict[str, float] = {"scale_fraction": reference, "scale_train_clips": float(scale_size(reference).train),
                             "scale_test_clips": float(scale_size(reference).test)}
    for fraction, costs in sorted(results.items()):
        tag = _tag(fraction, reference)
        if fraction > 1:
            out[f"scale_train_clips{tag}"] = float(scale_size(fraction).train)
            out[f"scale_test_clips{tag}"] = float(scale_size(fraction).test)
        for stage, cost in costs.items():
            out[f"scale_{_slug(stage)}_s{tag}"] = cost.seconds
            if cost.peak_mb == cost.peak_mb:
                out[f"scale_{_slug(stage)}_peak_mb{tag}"] = cost.peak_mb
        out[f"scale_peak_mb{tag}"] = max(c.peak_mb for c in costs.values() if c.peak_mb == c.peak_mb)
    out["scale_train_ratio"] = train_ratio
    return out


def scale_train_ratio(fraction: float) -> float:
    """benchmarks.train's trainer / bare loop throughput at this size (one epoch, best of 2)."""
    from . import train

    size = train.Size(classes=scale_size(fraction).classes, dims=(AUDIO_DIM, VIDEO_DIM),
                      samples=scale_size(fraction).train, epochs=1, repeats=2)
    with train.one_thread():
        return train._measure(size)["train_ratio"]


def run(full: bool = False, fractions: tuple[float, ...] | None = None, epochs: int = DEFAULT_EPOCHS) -> dict[str, float]:
    """The scale figures; `full` measures the growth table up to the full size."""
    fractions = fractions or (FULL_FRACTIONS if full else DEFAULT_FRACTIONS)
    results = {f: measure(f, epochs) for f in fractions}
    print(growth_table(results), file=sys.stderr)
    # at 13x one epoch of the bare loop alone takes most of an hour on one thread: the ratio is a 1x figure
    return figures(results, scale_train_ratio(min(reference_fraction(fractions), 1.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=f"fractions {FULL_FRACTIONS}")
    parser.add_argument("--fractions", help="comma-separated fractions of the full size, e.g. 1/16,1/4 (default "
                        "1/64,1/16); above 1, AudioSet's 527 classes")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per training (default 2)")
    parser.add_argument("--stage-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage_child:
        return _stage_child()
    fractions = tuple(float(Fraction(f)) for f in args.fractions.split(",")) if args.fractions else None
    print(json.dumps(run(args.full, fractions, args.epochs), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
