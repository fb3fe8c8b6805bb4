"""`python -m benchmarks [--full] [--json FILE]`: every performance benchmark, one table.

Each ratio compares the project's code with a baseline measured in the same run, on
the same machine, with the same data (CONTRACTS section 2). `--only train,duckdb` runs
some of the parts. `scale` runs the pipeline's stages on a VGGSound-size synthetic
dataset (1/64 and 1/16 of it by default, up to 1x with --full) and prints the
growth table on stderr; `python -m benchmarks.gpu` is the GPU check (README).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

from tasks.store.catalog import write_json

from . import duckdb_queries, extraction, predict, rerun, scale, train

PARTS: dict[str, Callable[[bool], dict[str, float]]] = {
    "train": train.run,
    "duckdb": duckdb_queries.run,
    "extraction": extraction.run,
    "rerun": rerun.run,
    "predict": predict.run,
    "prompt_rerun": rerun.run_with_server,
    "scale": scale.run,
}

# figure -> (unit, what it means)
MEANINGS: dict[str, tuple[str, str]] = {
    "train_samples_per_s": ("samples/s", "cscf_model.train, CSCF config, CPU, 1 thread"),
    "train_bare_samples_per_s": ("samples/s", "bare Adam loop, same model, batches and losses"),
    "train_ratio": ("x", "trainer / bare loop throughput (1 = no overhead)"),
    "train_checkpoint_samples_per_s": ("samples/s", "trainer with torch.save of the state every epoch"),
    "checkpoint_overhead_ratio": ("x", "trainer time with / without per-epoch checkpoints"),
    "checkpoint_mb": ("MiB", "size of one epoch checkpoint (weights + Adam state)"),
    "train_fp32_bare_samples_per_s": ("samples/s", "the fp32 loop of before issue 22: mappers one by one, all rows"),
    "train_speedup_vs_fp32_bare": ("x", "trainer / that fp32 loop throughput (target >= 2)"),
    "train_precision_bits": ("bits", "the trainer's resolved precision (16: bf16 autocast, 32: fp32)"),
    "train_gflop_per_s": ("GFLOP/s", "trainer's matmul FLOP rate, 3x the forward's FLOPs"),
    "matmul_gflop_per_s": ("GFLOP/s", "2048 x 2048 matmul, same precision and thread, best of 5"),
    "train_flop_fraction": ("", "trainer / matmul FLOP rate (target >= 0.5)"),
    "train_executed_flop_fraction": ("", "the same with the backward's FLOPs as run (no input grad of layer 1)"),
    "duckdb_rows": ("rows", "512-d feature rows in the benchmark's features view (Parquet: catalog.ROW_GROUP_ROWS)"),
    "duckdb_count_s": ("s", "per-class counts per modality (README pivot), best of 3"),
    "duckdb_knn_s": ("s", "top-10 rows by list_cosine_similarity to one vector, best of 3"),
    "duckdb_knn_cpu_s": ("s", "CPU time of that query, all DuckDB threads (wall minus waiting)"),
    "numpy_knn_s": ("s", "the same top-10 by NumPy from the Parquet file, best of 3"),
    "duckdb_knn_ratio": ("x", "DuckDB / NumPy nearest-neighbour time (< 1: SQL faster)"),
    "extraction_clips_per_s": ("clips/s", "extraction stage: decode, encode, write Parquet"),
    "bare_forward_clips_per_s": ("clips/s", "CLIP + CLAP forward passes alone, same inputs"),
    "extraction_ratio": ("x", "stage / bare forward throughput (1 = no overhead)"),
    "first_run_s": ("s", "cscf run on the tiny dataset, --epochs 2, empty cache"),
    "cached_rerun_s": ("s", "the same cscf run again, every stage cached (best)"),
    "rerun_floor_s": ("s", "same imports + Prefect in-process flow, one no-op task (best)"),
    "cached_rerun_ratio": ("x", "cached rerun / floor wall time (1 = caching is free)"),
    "cached_rerun_cpu_s": ("s", "CPU time of the cached rerun, server process included"),
    "rerun_floor_cpu_s": ("s", "CPU time of the floor, server process included"),
    "cached_rerun_cpu_ratio": ("x", "cached rerun / floor CPU time"),
    "scale_fraction": ("", "reference size: the largest fraction of VGGSound-GZSL's size up to 1 (150k train clips)"),
    "scale_train_clips": ("clips", "training clips at that size (271 classes, 1024-d audio, 512-d video)"),
    "scale_test_clips": ("clips", "test clips at that size"),
    "scale_peak_mb": ("MiB", "largest peak resident memory of any stage (each runs in its own process)"),
    "scale_train_ratio": ("x", "trainer / bare loop throughput at that size, CPU, 1 thread"),
    "prompt_rerun_s": ("s", "cscf run after an offline-prompt change (descriptions and downstream recomputed)"),
    "prompt_rerun_own_work_s": ("s", "those recomputed stages' own time, in-process, without Prefect"),
    "prompt_rerun_ratio": ("x", "prompt-change rerun / its stages' own work (1 = no overhead)"),
    "server_prompt_rerun_s": ("s", "the same rerun against a running local Prefect server (PREFECT_API_URL)"),
    "server_prompt_rerun_own_work_s": ("s", "those stages' own time for that rerun"),
    "server_prompt_rerun_ratio": ("x", "server rerun / its stages' own work"),
    "server_cached_rerun_s": ("s", "fully cached cscf run against that server (best of 2)"),
    "load_avg_start": ("", "1-minute load average when the benchmarks began"),
    "load_avg_end": ("", "1-minute load average when they ended"),
    "predict_samples_per_s": ("samples/s", "cscf predict streaming a Parquet file (read, check, CSCF, write)"),
    "predict_bare_samples_per_s": ("samples/s", "CSCF forward alone on the same samples, tensors in memory"),
    "predict_ratio": ("x", "cscf predict / bare forward throughput (1 = no overhead)"),
    "predict_1m_rows_one_group_peak_rss_mb": ("MiB", "peak resident memory (own VmHWM) of a process predicting "
                                              "1,000,000 rows in ONE row group (one-linear-mapper model)"),
    "predict_1m_rows_small_groups_peak_rss_mb": ("MiB", "the same rows in 65,536-row groups"),
    "predict_1m_rows_loaded_rss_mb": ("MiB", "that process once imports and model are loaded"),
    "predict_peak_rss_one_group_ratio": ("x", "one-row-group / small-row-groups peak (bounded: ~1, target <= 1.5)"),
    "predict_1m_rows_input_mb": ("MiB", "size of the 1,000,000-row input file (600,000 samples, 64-d + 48-d vectors)"),
    "predict_1m_rows_s": ("s", "wall time of that prediction (small groups), process start included"),
    "wall_s": ("s", "wall time of all the benchmarks"),
}


def run_all(full: bool, parts: list[str]) -> dict[str, float]:
    """The figures of `parts`, in order, plus the machine's load and the total time."""
    figures = {"load_avg_start": os.getloadavg()[0]}
    began = time.perf_counter()
    for name in parts:
        print(f"benchmarks: {name} ...", file=sys.stderr, flush=True)
        figures.update(PARTS[name](full))
    figures["wall_s"] = time.perf_counter() - began
    figures["load_avg_end"] = os.getloadavg()[0]
    return figures


def meaning(name: str) -> tuple[str, str]:
    """Unit and meaning of a figure; the scale figures at other sizes (`_at_1_N`, `_at_Nx`) and
    the per-stage `scale_<stage>_s|_peak_mb` by pattern."""
    if name in MEANINGS:
        return MEANINGS[name]
    sized = re.fullmatch(r"(scale_.+?)_at_(1_(\d+)|(\d+)x)", name)
    size = "at the reference size (the largest up to 1x)"
    if sized:
        name, _, part, times = sized.groups()
        size = f"at 1/{part} size" if part else f"at {times}x VGGSound's clips, AudioSet's 527 classes"
        if name in MEANINGS:
            return MEANINGS[name][0], f"{MEANINGS[name][1]}, {size}"
    found = re.fullmatch(r"scale_(.+?)_(s|peak_mb)", name)
    if found:
        stage, what = found.groups()
        return ("s" if what == "s" else "MiB",
                f"{'wall time' if what == 's' else 'peak resident memory'} of stage {stage}, {size}")
    return ("", "")


def _value(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def table(figures: dict[str, float]) -> str:
    """One aligned row per figure: name, value, unit, meaning."""
    rows = [("name", "value", "unit", "meaning")]
    rows += [(k, _value(v), *meaning(k)) for k, v in figures.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit:<{widths[2]}}  {meaning}".rstrip()
        for name, value, unit, meaning in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="bigger sizes and more repeats (slower, steadier)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as one flat JSON object")
    parser.add_argument("--only", help=f"comma-separated parts (default: all of {','.join(PARTS)})")
    args = parser.parse_args(argv)
    parts = args.only.split(",") if args.only else list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    figures = run_all(args.full, parts)
    bad = {k: v for k, v in figures.items() if not math.isfinite(v)}
    if bad:
        raise RuntimeError(f"benchmark figures are not finite: {bad}")
    print(table(figures))
    if args.json:
        write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
