"""Development measurements on validation data: how every routing default is chosen (issue 21).

The test split of a development dataset is scored once, after the choice. Before that,
every candidate is scored on a validation split carved from the dataset's evaluation
samples: per class, a seeded half of its test samples (`carve`). Training reads only the
training rows, exactly as `cscf run` trains CSCF (same stages, same model, the same
pseudo-unseen model for calibration and the router), so one training per dataset and
seed serves every candidate: candidates differ in how the trained parts are combined.

    python -m benchmarks.development --data /tmp/dev/pydocs3-het-s{seed} --data ... \
        --seeds 0,1,2 --out docs/results/development            # validation only
    ... --split test                                             # once, after the choice

With `--split test` CSCF is also scored as `cscf run --validation FILE` makes it, FILE being
the validation half (`CSCF --validation`): what labelled samples of a user's own buy. On the
validation split the same is measured within the validation half (validation_file_nested,
`validation-file.json`), with and without the gate scaling `--validation` may choose.

`{seed}` in a --data path is replaced by the seed (make_heterogeneous.py --seed N builds
one ownership of the classes per seed). Trained models are cached under --workspace.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from cscf_model import CSCF, TrainConfig, TrainData, create_model, load_config, train
from cscf_model.calibration import choose_margins, cosine_rule_accuracy, text_aligned, train_pseudo_unseen
from cscf_model.router import fit_router_from_model
from cscf_model.selection import apply_selection, select_on_validation
from flows.params import PipelineParams
from flows.pipeline import Wiring
from tasks.evaluation.scoring import cscf_scorer, encode_test, evaluate_method, routing_ceiling
from tasks.ingest.features import build_features
from tasks.semantics.descriptions import build_descriptions
from tasks.semantics.embeddings import build_class_embeddings
from tasks.store import catalog
from tasks.training.mmhcl_data import MMHCLData, TestSet, load_mmhcl
from tasks.training.split import build_split

# A candidate: (trained CSCF, its pseudo-unseen training) -> the model to score.
Candidate = Callable[[CSCF, dict[str, Any]], CSCF]


def prepare(data_dir: Path, workspace: Path, seed: int) -> MMHCLData:
    """The pipeline's features, descriptions, class embeddings and split stages (plain
    functions, fixed keys, skipped when their output exists) -> train and test tensors.
    The seen sets as `cscf run` finds them (`--seen auto`): halves where every modality has
    training rows of every class (the default), the classes each has rows of otherwise."""
    default = str(data_dir) == "default"  # the embedded dataset, split into halves as `cscf run` does
    features = None if default else str(data_dir / "features.parquet")
    params = PipelineParams(features=features, classes=None if default else str(data_dir / "classes.csv"),
                            llm={"mode": "offline"})
    classes = params.classes_path()
    settings = Wiring(params).description_settings
    modalities = None if default else sorted(pq.read_table(features, columns=["modality"]).column(0).unique().to_pylist())
    steps = [("features", "f", ".parquet", lambda: build_features(workspace, "f", features, classes, 0)),
             ("descriptions", "d", ".parquet", lambda: build_descriptions(
                 workspace, "d", classes, params.llm.model_dump(), settings.cache_fields())),
             ("class_embeddings", "e", ".parquet", lambda: build_class_embeddings(workspace, "e", "d", params.encoder)),
             ("split", "s", ".classes.parquet", lambda: build_split(workspace, "s", "f", classes, modalities, seed))]
    for stage, key, suffix, build in steps:
        if not catalog.stage_output(workspace, stage, key, suffix).exists():
            build()
    return load_mmhcl(workspace, "f", "s", "e")


def carve(test: TestSet, seed: int) -> dict[str, torch.Tensor]:
    """Rows of the validation and the test half: per class, a seeded half of its samples."""
    rng = np.random.default_rng(10_000 + seed)
    val = []
    for c in test.labels.unique().tolist():
        rows = torch.nonzero(test.labels == c).squeeze(1).numpy()
        val.extend(rng.permutation(rows)[: len(rows) // 2].tolist())
    is_val = torch.zeros(len(test.labels), dtype=torch.bool)
    is_val[val] = True
    return {"validation": torch.nonzero(is_val).squeeze(1), "test": torch.nonzero(~is_val).squeeze(1)}


def part(data: MMHCLData, rows: torch.Tensor) -> MMHCLData:
    """`data` with its test set cut to `rows`."""
    t = data.test
    return dataclasses.replace(data, test=TestSet([t.sample_ids[i] for i in rows.tolist()], t.labels[rows],
                                                  t.seen_by[rows], [x[rows] for x in t.features], t.available[rows]))


def trained(data: MMHCLData, workspace: Path, seed: int, epochs: int) -> tuple[CSCF, dict[str, Any]]:
    """CSCF trained as tasks/training/train.py trains it, and its pseudo-unseen training
    (model, fit and validation data, pseudo-seen mask), cached in `workspace`."""
    path = workspace / f"dev-cscf-e{epochs}.pt"
    cfg = TrainConfig(epochs=epochs, seed=seed)
    aligned = text_aligned(data.train, data.class_emb)
    make = lambda seen: create_model("CSCF", data.input_dims, data.class_emb, seen, aligned)  # noqa: E731
    if not path.exists():
        torch.manual_seed(cfg.seed)
        model, _ = train(make(data.seen), data.train, cfg)
        pseudo = train_pseudo_unseen(make, data.train, data.seen, cfg, model.config.calibration_holdout)
        with catalog.atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "pseudo": pseudo.model.state_dict(),
                        "fit": dataclasses.asdict(pseudo.fit), "val": dataclasses.asdict(pseudo.val),
                        "pseudo_seen": pseudo.pseudo_seen}, tmp)
    state = torch.load(path, weights_only=True)
    state["fit"], state["val"] = TrainData(**state["fit"]), TrainData(**state["val"])
    model, pseudo_model = make(data.seen), make(state["pseudo_seen"])
    model.load_state_dict(state["model"])
    pseudo_model.load_state_dict(state["pseudo"])
    pseudo = {"model": pseudo_model.eval(), "fit": state["fit"], "val": state["val"], "pseudo_seen": state["pseudo_seen"]}
    model.router = fit_router_from_model(pseudo_model, state["fit"], state["val"], state["pseudo_seen"],
                                         model.config.calibration_holdout, seed, bank_size=model.config.router_bank_size)
    return model.eval(), pseudo


def score(model: CSCF, data: MMHCLData) -> dict[str, Any]:
    """Accuracy on every subset, routing accuracy and the routing ceiling of each all[...] subset."""
    encoded = encode_test(model, data)
    scores, _, routing = evaluate_method(cscf_scorer(model, encoded), data)
    return {"scores": scores, "routing": routing, "ceiling": routing_ceiling(model, encoded, data)}


def with_validation(model: CSCF, validation: MMHCLData, scale_gates: bool = True) -> CSCF:
    """`model` with the choices `cscf run --validation` makes on the samples of `validation`
    (cscf_model.selection): each sample shows every modality it has, as a user's file would.
    scale_gates=False: the same with the gates kept as trained."""
    test = validation.test
    apply_selection(model, select_on_validation(model, encode_test(model, validation), test.available, test.labels,
                                                scale_gates=scale_gates))
    return model


def validation_file_nested(model: CSCF, pseudo: dict[str, Any], half: MMHCLData, seed: int) -> dict[str, float]:
    """`all` accuracy (percent) on the validation half `half` of CSCF, and of CSCF as `cscf run
    --validation` makes it with and without scaling its gates: the half is cut in two per
    class (carve), the choices are made on one quarter and scored on the other, both ways.
    The validation-side evidence for what `--validation` chooses; the test half is not read."""
    quarters = carve(half.test, seed + 1)
    out = {}
    for name, scale_gates in (("CSCF", None), ("--validation, gates as trained", False), ("--validation", True)):
        correct = shown = 0.0
        for fit, held in (("validation", "test"), ("test", "validation")):
            chosen = candidates()["CSCF"](copy.deepcopy(model), pseudo)
            if scale_gates is not None:
                chosen = with_validation(chosen, part(half, quarters[fit]), scale_gates)
            scored = part(half, quarters[held])
            n = int(scored.test.available.all(1).sum())
            correct += score(chosen, scored)["scores"]["all"] * n
            shown += n
        out[name] = correct / shown
    return out


def _print(name: str, candidate: str, got: dict[str, Any]) -> None:
    """One line per dataset and candidate: all, ceiling, acc_mix, every pattern's
    accuracy/routing/ceiling, each modality's seen and unseen accuracy."""
    s = got["scores"]
    print(f"{name:24s} {candidate:12s} all {s.get('all') or 0:5.1f}  ceiling "
          f"{got['ceiling'].get('all') or 0:5.1f}  acc_mix {s['acc_mix']:5.1f}  " + "  ".join(
              f"{k[4:-1]} {v or 0:.0f}/{got['routing'].get(k) or 0:.0f}/{got['ceiling'].get(k) or 0:.0f}"
              for k, v in s.items() if k.startswith("all[")) + "  | " + "  ".join(
              f"{k} {v or 0:.1f}" for k, v in s.items() if k.endswith(("_s", "_u")) and "+" not in k
              and not k[:2] in ("A_", "B_")), flush=True)


def cosine_on_unseen(model: CSCF, data: MMHCLData) -> dict[str, float]:
    """Per text-aligned modality, the training-free rule argmax_c cos(x, c) on the samples of
    the classes it never saw: what its unseen-class accuracy is measured against."""
    out = {}
    for m, name in enumerate(data.modalities):
        rows = data.test.available[:, m] & ~data.test.seen_by[:, m]
        if model.aligned[m] and rows.any():
            out[name] = cosine_rule_accuracy(data.test.features[m][rows], data.test.labels[rows], data.class_emb)
    return out


def candidates() -> dict[str, Candidate]:
    """The variants compared: the shipped CSCF (gate_mix "product", harmonic margins for
    text-aligned modalities) and what it was chosen against, each from the same trained
    weights: the former default (gate_mix "prior", margins by the mean within 3 points of
    seen accuracy), the product without temperatures, CSMF on top of the router, averaging."""
    def variant(temperatures: bool = True, **changes: Any) -> Candidate:
        def make(model: CSCF, pseudo: dict[str, Any]) -> CSCF:
            model.config = load_config("CSCF").replace(**changes)
            c = model.config
            model.margin.copy_(torch.tensor(choose_margins(pseudo["model"], pseudo["val"], pseudo["pseudo_seen"],
                                                           c.calibration_criterion, c.calibration_max_seen_drop,
                                                           model.aligned)))
            if not temperatures:
                model.router.temperature = torch.ones_like(model.router.temperature)
            return model
        return make

    former = {"gate_mix": "prior", "calibration_criterion": "mean"}
    return {"CSCF": variant(), "CSCF before (prior, mean)": variant(**former),
            "prior fusion": variant(gate_mix="prior"), "mean margins": variant(calibration_criterion="mean"),
            "product, T = 1": variant(temperatures=False), "B+O+R+C": variant(fusion="csmf"),
            "B+O": variant(fusion="mean")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.development", description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True, help="dataset folder; {seed} is replaced by the seed")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--workspace", type=Path, default=Path("dev-workspace"))
    p.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    nested: dict[str, dict[str, float]] = {}  # validation_file_nested, on the validation split
    for pattern in args.data:
        for seed in [int(s) for s in args.seeds.split(",")]:
            folder = Path(pattern.format(seed=seed))
            ws = args.workspace / (f"default-s{seed}" if pattern == "default" else folder.name)
            data = prepare(folder, ws, seed)
            halves = carve(data.test, seed)
            rows = halves[args.split]
            model, pseudo = trained(data, ws, seed, args.epochs)
            cosine = cosine_on_unseen(model, part(data, rows))
            temperature = model.router.temperature.clone()
            variants = dict(candidates())
            if args.split == "test":
                variants["CSCF --validation"] = lambda model, pseudo: with_validation(
                    candidates()["CSCF"](model, pseudo), part(data, halves["validation"]))
            else:
                nested[ws.name] = validation_file_nested(model, pseudo, part(data, rows), seed)
                print(f"{ws.name:24s} `all`, choices on one quarter scored on the other: "
                      + "  ".join(f"{k} {v:.1f}" for k, v in nested[ws.name].items()), flush=True)
            for name, candidate in variants.items():
                model.router.temperature = temperature.clone()
                got = score(candidate(model, pseudo), part(data, rows)) | {"cosine_rule_unseen": cosine}
                results.setdefault(ws.name, {})[name] = got
                _print(ws.name, name, got)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.split}.json").write_text(json.dumps(results, indent=1, default=float))
        if nested:
            (args.out / "validation-file.json").write_text(json.dumps(nested, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
