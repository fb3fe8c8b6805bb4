"""The router's k-NN bank size (ModelConfig.router_bank_size): validation accuracy and evaluation time.

At 1x VGGSound size (150k training clips: far more rows than any bank size tried) CSCF is
trained once per dataset as `cscf run` trains it (benchmarks.development.trained, its
pseudo-unseen model included), then the router is refitted with each bank size and CSCF
is scored on the validation half of the test samples (development.carve; the test half is
never read here). The evaluation time is encoding and scoring every test sample with that
router, as the evaluate stage does for CSCF. Few epochs: the bank enters only the router,
whose k-NN distance is measured on the standardised inputs, not on what training learned.

The datasets are the scale dataset (benchmarks.scale_data) drawn with different generator
seeds. The development datasets of docs/results/development have at most a few thousand
training rows per modality: every size tried keeps all of them there, and they cannot
tell the sizes apart (their row counts are printed).

    python -m benchmarks.knn_bank --seeds 0,1 --out docs/results/knn-bank [--fraction 1] [--epochs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from cscf_model import CSCF
from cscf_model.router import fit_router_from_model

from .development import candidates, carve, part, prepare, score, trained
from .scale_data import scale_size, write_scale_dataset
from tasks.evaluation.scoring import cscf_scorer, encode_test, evaluate_method
from tasks.training.mmhcl_data import MMHCLData

SIZES = (4096, 16384, 32768)


def with_bank(model: CSCF, pseudo: dict[str, Any], size: int, seed: int) -> tuple[CSCF, float]:
    """CSCF with its router refitted on a bank of `size` rows, and the refit's seconds."""
    began = time.perf_counter()
    model.router = fit_router_from_model(pseudo["model"], pseudo["fit"], pseudo["val"], pseudo["pseudo_seen"],
                                         model.config.calibration_holdout, seed, bank_size=size)
    model.config = dataclasses.replace(model.config, router_bank_size=size)
    return model, time.perf_counter() - began


def evaluation_seconds(model: CSCF, data: MMHCLData) -> float:
    """Encode and score every test sample, as the evaluate stage does for CSCF."""
    began = time.perf_counter()
    evaluate_method(cscf_scorer(model, encode_test(model, data)), data)
    return time.perf_counter() - began


def measure(seed: int, fraction: float, epochs: int, workspace: Path) -> dict[str, Any]:
    """Per bank size: validation scores, routing, router fit and evaluation seconds, on one dataset."""
    folder = workspace / f"scale-{fraction:g}-s{seed}"
    if not (folder / "data" / "classes.csv").exists():
        write_scale_dataset(folder / "data", scale_size(fraction), seed=seed)
    data = prepare(folder / "data", folder, seed)
    rows = carve(data.test, seed)["validation"]
    model, pseudo = trained(data, folder, seed, epochs)
    model = candidates()["CSCF"](model, pseudo)  # the shipped configuration and its margins
    out: dict[str, Any] = {"train_rows": [len(y) for y in data.train.labels]}
    for size in SIZES:
        model, fit_s = with_bank(model, pseudo, size, seed)
        got = score(model, part(data, rows))
        out[str(size)] = {"scores": got["scores"], "routing": got["routing"], "router_fit_s": fit_s,
                          "evaluation_s": evaluation_seconds(model, data),
                          "bank_rows": [len(gate.bank) for gate in model.router.gates]}
        s = out[str(size)]
        print(f"seed {seed} bank {size:6d}: all {s['scores']['all']:.2f}  acc_mix {s['scores']['acc_mix']:.2f}  "
              f"routing {s['routing'].get('all') or 0:.2f}  fit {fit_s:.1f} s  evaluation {s['evaluation_s']:.1f} s",
              flush=True)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.knn_bank", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1", help="generator (and training) seeds: one dataset each")
    p.add_argument("--fraction", type=float, default=1.0, help="of VGGSound's size (default 1)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workspace", type=Path, default=Path("knn-bank-workspace"))
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    results = {f"s{seed}": measure(int(seed), args.fraction, args.epochs, args.workspace)
               for seed in args.seeds.split(",")}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "validation.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
