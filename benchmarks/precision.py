"""Accuracy of the fast trainer (issue 22) against the fp32 loop before it, on the embedded
default dataset or a dataset folder.

Runs `cscf run --seed S [--epochs N]` for each seed twice: with the trainer as it is
("fast": batched mappers, each modality on its own rows, bf16 arithmetic and bf16 storage
of the training vectors where `precision="auto"` picks it) and with the trainer's step and
optimizer replaced by those of before issue 22 and `--precision fp32` ("fp32":
`benchmarks.train.reference_loss` / `reference_optimizer`, vectors held in fp32), each arm
in its own process and workspace. Prints CSCF's A_all+B_all and acc_mix per seed and as
mean ± std over seeds, and writes them to OUT/precision.json.

    python -m benchmarks.precision --seeds 0,1,2 --out /tmp/precision [--epochs 50]
    python -m benchmarks.precision --data /tmp/digits --modalities left,right --out /tmp/precision-digits

--data DIR reads DIR/features.parquet and DIR/classes.csv (the layout data/examples/ writes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ARMS = ("fp32", "fast")
FIGURES = ("A_all+B_all", "acc_mix")


def run_arm(arm: str, seeds: list[int], out: Path, epochs: int | None, dataset: list[str]) -> None:
    """`cscf run` for every seed in this process, the trainer patched for the "fp32" arm.

    One intra-op thread, as in benchmarks.train: two on two shared cores stall in OpenMP
    barriers (50 epochs of B on the default dataset: 35 s with two at load 5, 5 s with one)."""
    import torch

    from cscf_model import trainer
    from flows.cli import main

    from .train import reference_loss, reference_optimizer

    torch.set_num_threads(1)
    if arm == "fp32":
        trainer.batch_loss, trainer.make_optimizer = reference_loss, reference_optimizer
    precision = ["--precision", "fp32"] if arm == "fp32" else []
    for seed in seeds:
        argv = ["run", "--seed", str(seed), "--out", str(out / arm / f"seed-{seed}"),
                "--workspace", str(out / arm / "workspace"), *dataset, *precision]
        if main(argv + (["--epochs", str(epochs)] if epochs else [])) != 0:
            raise SystemExit(f"benchmarks.precision: cscf run failed ({arm}, seed {seed})")


def summary(seeds: list[int], out: Path) -> dict[str, dict[str, list[float]]]:
    """{arm: {figure: [value per seed]}} of CSCF, read from each run's metrics.json."""
    figures = {}
    for arm in ARMS:
        cscf = [json.loads((out / arm / f"seed-{s}" / "metrics.json").read_text())["methods"]["CSCF"] for s in seeds]
        figures[arm] = {f: [m[f] for m in cscf] for f in FIGURES}
    return figures


def table(figures: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for f in FIGURES:
        cells = []
        for arm in ARMS:
            v = figures[arm][f]
            spread = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{arm} {statistics.mean(v):.2f} ± {spread:.2f} ({', '.join(f'{x:.2f}' for x in v)})")
        diff = statistics.mean(figures["fast"][f]) - statistics.mean(figures["fp32"][f])
        rows.append(f"{f}: " + "; ".join(cells) + f"; fast - fp32 {diff:+.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, help="training epochs (default: cscf run's)")
    parser.add_argument("--data", type=Path, help="dataset folder with features.parquet and classes.csv (default: the embedded one)")
    parser.add_argument("--modalities", help="cscf run --modalities for --data")
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in this process
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = [] if args.data is None else ["--features", str(args.data / "features.parquet"),
                                            "--classes", str(args.data / "classes.csv")]
    dataset += ["--modalities", args.modalities] if args.modalities else []
    if args.arm:
        run_arm(args.arm, seeds, args.out, args.epochs, dataset)
        return 0
    for arm in ARMS:
        cmd = [sys.executable, "-m", "benchmarks.precision", "--arm", arm, "--seeds", args.seeds, "--out", str(args.out)]
        cmd += (["--epochs", str(args.epochs)] if args.epochs else [])
        cmd += (["--data", str(args.data)] if args.data else []) + (["--modalities", args.modalities] if args.modalities else [])
        subprocess.run(cmd, check=True)
    figures = summary(seeds, args.out)
    (args.out / "precision.json").write_text(json.dumps(figures, indent=2))
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
