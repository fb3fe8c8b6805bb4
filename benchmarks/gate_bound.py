"""How much of CSCF's distance to the routing ceiling its gates account for (issue 21).

On the validation half of each development dataset and seed (benchmarks.development: same
training, same carving; the test half is not read), on the samples that show every modality,
CSCF's `all` accuracy:

- as trained (`CSCF`);
- with one modality's gate replaced by an oracle that knows whether that modality saw the
  sample's class (P = 0.95 or 0.05), for each modality, and with every gate replaced;
- with every gate fitted again on labelled validation samples, on one half of them
  (selection.alternate_halves) and scored on the other, both ways: its logit Platt-scaled
  (selection.platt_scaling, what `cscf run --validation` may adopt), or its logistic weights
  refitted on the gate's own features.

The oracles read the labels, and the refits read labels of the very distribution they are
scored on: bounds on what better gates could give, not methods. The routing ceiling is the
same samples decided by the modalities that saw their class.

    python -m benchmarks.gate_bound --data default --data /tmp/dev/digits4-het-s{seed} ... \\
        --seeds 0,1,2 --workspace /tmp/devws2 --json docs/results/development/gate-bound.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from cscf_model import CSCF, Encoded
from cscf_model.router import fit_logistic
from cscf_model.selection import alternate_halves, platt_scaling, scaled_logits
from tasks.evaluation.scoring import encode_test, routing_ceiling
from tasks.training.mmhcl_data import MMHCLData

from .development import candidates, carve, part, prepare, trained

ORACLE = math.log(0.95 / 0.05)  # the oracle gate's logit: P = 0.95 that the modality saw the class, or 0.05


def gate_bound(model: CSCF, data: MMHCLData) -> dict[str, float]:
    """The accuracies of the module docstring (percent) for `model` on `data`'s test samples
    that show every modality."""
    test = data.test
    rows = test.available.all(1).nonzero().squeeze(1)
    every = encode_test(model, data)
    encoded, labels = every.rows(rows), test.labels[rows]
    present = torch.ones(len(rows), len(data.modalities), dtype=torch.bool)
    saw = model.seen[:, labels]  # (M, B): the modality saw the sample's class

    def accuracy(gate_logit: torch.Tensor, at: torch.Tensor | None = None) -> float:
        at = torch.arange(len(rows)) if at is None else at
        enc = Encoded(encoded.raw[:, at], None, gate_logit[:, at], None)
        return 100.0 * float((model.fuse(enc, present[at]).fused.argmax(-1) == labels[at]).float().mean())

    trained_logit = encoded.gate_logit
    oracle = torch.where(saw, ORACLE, -ORACLE)
    out = {"CSCF": accuracy(trained_logit)}
    for m, name in enumerate(data.modalities):
        out[f"oracle gate: {name}"] = accuracy(torch.where(torch.arange(len(saw))[:, None] == m, oracle, trained_logit))
    out["oracle gates: every modality"] = accuracy(oracle)
    features = [gate.features(x[rows], encoded.raw[m] if gate.reads_logits else None, model.seen[m])
                for m, (gate, x) in enumerate(zip(model.router.gates, test.features))]
    half = alternate_halves(labels)
    for name, refit in (("Platt-scaled on validation samples", _platt), ("refitted on validation samples", _refit)):
        correct = 0.0
        for fit in (half, ~half):
            logit = refit(model, trained_logit, features, present, labels, fit)
            correct += accuracy(logit, (~fit).nonzero().squeeze(1)) * int((~fit).sum())
        out[name] = correct / len(rows)
    out["routing ceiling"] = routing_ceiling(model, every, data)["all"]
    return out


def _platt(model: CSCF, logit: torch.Tensor, features: list[torch.Tensor], present: torch.Tensor,
           labels: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """Every gate's logit Platt-scaled on the samples under `fit`."""
    slopes, shifts, _, _ = platt_scaling(model, logit[:, fit], present[fit], labels[fit])
    return scaled_logits(logit, slopes, shifts)


def _refit(model: CSCF, logit: torch.Tensor, features: list[torch.Tensor], present: torch.Tensor,
           labels: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """Every gate's logistic weights fitted again on its features of the samples under `fit`,
    at the base rate the gate was fitted at (as platt_scaling moves it)."""
    out = []
    for m, f in enumerate(features):
        saw = model.seen[m][labels[fit]].float()
        w = fit_logistic(f[fit], saw)
        out.append(f @ w[:-1] + w[-1] - torch.logit(saw.mean()) + torch.logit(model.router.base_rate[m]))
    return torch.stack(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate_bound", description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True, help="dataset folder; {seed} is replaced by the seed")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--workspace", type=Path, default=Path("dev-workspace"))
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    results = {}
    for pattern in args.data:
        for seed in [int(s) for s in args.seeds.split(",")]:
            folder = Path(pattern.format(seed=seed))
            ws = args.workspace / (f"default-s{seed}" if pattern == "default" else folder.name)
            data = prepare(folder, ws, seed)
            model, pseudo = trained(data, ws, seed, args.epochs)
            model = candidates()["CSCF"](model, pseudo)
            results[ws.name] = gate_bound(model, part(data, carve(data.test, seed)["validation"]))
            print(f"{ws.name:20s} " + "  ".join(f"{k} {v:.1f}" for k, v in results[ws.name].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
