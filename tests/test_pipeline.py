"""The whole `cscf` flow on a tiny dataset: outputs, caching, reruns, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tiny_data import write_dataset

METRIC_KEYS = {"A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s", "A_all+B_all", "acc_mix"}
GENERAL_KEYS = {"audio_s", "audio_u", "video_s", "video_u", "all", "all[audio]", "all[video]"}
EPOCHS = "4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def first_run(dataset, prefect_server, tmp_path_factory):
    """One complete `cscf run` through the command line; later tests rerun on its workspace."""
    from flows.cli import main

    features, classes = dataset
    root = tmp_path_factory.mktemp("run")
    argv = ["run", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video",
            "--seed", "0", "--out", str(root / "out"), "--workspace", str(root / "ws"), "--epochs", EPOCHS]
    assert main(argv) == 0
    return root, argv


def _run_flow(root: Path, dataset, **changes) -> dict:
    from flows.params import PipelineParams
    from flows.pipeline import cscf

    features, classes = dataset
    params = PipelineParams(features=str(features), classes=str(classes), modalities=["audio", "video"],
                            workspace=str(root / "ws"), epochs=int(EPOCHS), **changes)
    return cscf(params)


def evaluation_outputs(workspace: Path, out: Path) -> tuple[dict, pd.DataFrame]:
    """metrics.json as published in `out`, and the per-sample predictions that the same
    evaluation (the one whose metrics.json it is, byte for byte) wrote into `workspace`."""
    import pyarrow.parquet as pq

    published = (out / "metrics.json").read_bytes()
    key, = [p.name.removesuffix(".metrics.json") for p in (workspace / "evaluate").glob("*.metrics.json")
            if p.read_bytes() == published]
    return json.loads(published), pq.read_table(workspace / "evaluate" / f"{key}.predictions.parquet").to_pandas()


def accuracies_from_predictions(predictions: pd.DataFrame) -> dict[tuple[str, str], float]:
    """Top-1 accuracy in percent of every (method, subset), counted from the prediction rows."""
    right = predictions["true_class"] == predictions["predicted_class"]
    return (100.0 * right.groupby([predictions["method"], predictions["subset"]]).mean()).to_dict()


def check_accuracies(metrics: dict, predictions: pd.DataFrame) -> None:
    """Every method's score in metrics.json is the accuracy of its prediction rows (None: a
    subset without rows), and acc_mix the mean of the `<m>_s`, `<m>_u` and `all[...]` ones.
    The AV-GZSL figures S, U, H are no subset of their own (see gzsl_from_predictions)."""
    counted = accuracies_from_predictions(predictions)
    scored = {(method, subset): score for method, scores in metrics["methods"].items()
              for subset, score in scores.items() if subset not in ("acc_mix", "S", "U", "H") and score is not None}
    assert scored.keys() == counted.keys()  # no rows exactly where metrics.json has None
    assert scored == pytest.approx(counted, abs=1e-4)
    for method, scores in metrics["methods"].items():
        mixed = [f"{m}_s" for m in metrics["modalities"]] + [f"{m}_u" for m in metrics["modalities"]]
        mixed = [counted[method, k] for k in mixed + [k for k in scores if k.startswith("all[")] if (method, k) in counted]
        assert scores["acc_mix"] == pytest.approx(sum(mixed) / len(mixed), abs=1e-4), method


def routing_from_predictions(predictions: pd.DataFrame, seen: dict[str, list[str]], method: str, subset: str) -> float:
    """Percent of a subset's rows whose dominant modality saw the true class, among the rows
    whose class some modality saw, counted from the prediction rows and the seen sets."""
    rows = predictions[(predictions["method"] == method) & (predictions["subset"] == subset)]
    judged = rows[rows["true_class"].isin(set().union(*map(set, seen.values())))]
    right = [true in seen[dominant] for true, dominant in zip(judged["true_class"], judged["dominant"])]
    return 100.0 * sum(right) / len(right)


def ausuc_by_sweep(logits: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor) -> float:
    """Area (percent) under seen- vs unseen-class accuracy as calibrated stacking's margin
    sweeps, by brute force: plain argmax of the logits less the margin on the seen classes,
    at one margin inside every interval between two points where a prediction changes,
    the points joined by straight lines."""
    gap = logits.masked_fill(~seen, -torch.inf).amax(1) - logits.masked_fill(seen, -torch.inf).amax(1)
    cuts = sorted(set(gap.tolist()))
    margins = [cuts[0] - 1] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[-1] + 1]
    own = seen[labels]
    points = []
    for t in margins:
        right = ((logits - t * seen.float()).argmax(1) == labels).double()
        points.append((float(right[~own].mean()), float(right[own].mean())))  # (unseen, seen)
    assert points[0][0] == 0 and points[-1][1] == 0  # from all predicted seen to all predicted unseen
    return 100.0 * sum((u1 - u0) * (s0 + s1) / 2 for (u0, s0), (u1, s1) in zip(points, points[1:]))


def test_run_writes_contract_metrics_and_report(first_run, dataset):
    root, _ = first_run
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics["dataset"] == "features"
    assert metrics["modalities"] == ["audio", "video"]
    assert metrics["seed"] == 0
    assert set(metrics["classes"]) == {"A_seen", "B_seen", "seen", "all"}
    assert not set(metrics["classes"]["A_seen"]) & set(metrics["classes"]["B_seen"])
    assert metrics["classes"]["seen"] == {"audio": metrics["classes"]["A_seen"], "video": metrics["classes"]["B_seen"]}
    assert set(metrics["methods"]) >= {"CSCF", "B", "B+O", "B+O+D"}
    for scores in metrics["methods"].values():
        assert set(scores) == METRIC_KEYS | GENERAL_KEYS
        assert scores["audio_s"] == scores["A_s"] and scores["all[video]"] == scores["A_u+B_s"]
    _, predictions = evaluation_outputs(root / "ws", root / "out")
    check_accuracies(metrics, predictions)
    # DMSS's routing accuracy (method B+O+D, every test sample with both modalities)
    assert metrics["diagnostics"]["dmss_routing_accuracy"] == pytest.approx(
        routing_from_predictions(predictions, metrics["classes"]["seen"], "B+O+D", "all"), abs=1e-4)
    report = (root / "out" / "report.md").read_text()
    cscf = metrics["methods"]["CSCF"]
    assert f"{cscf['A_s+B_u']:.2f}" in report and f"{cscf['acc_mix']:.2f}" in report
    # seen classes are learned even in 4 epochs on this easy data
    assert cscf["A_s"] > 60 and cscf["B_s"] > 60
    # issue 6: the seen/unseen trade-off per modality, Table 1 without calibration, the figure
    from cscf_model import model_from_checkpoint
    from tasks.training.mmhcl_data import load_mmhcl

    keys = _run_flow(root, dataset)["keys"]  # all cached: the first run's keys
    data = load_mmhcl(root / "ws", keys["features"], keys["split"], keys["class_embeddings"], parts=("test",))
    model = model_from_checkpoint(torch.load(root / "ws" / "train" / f"{keys['train[CSCF]']}.pt", weights_only=True))
    for m, modality in enumerate(("audio", "video")):
        su = metrics["diagnostics"]["seen_unseen"][modality]
        assert su["seen_acc"] == pytest.approx(cscf["A_s" if modality == "audio" else "B_s"])
        rows = data.test.available[:, m]  # the modality's raw logits (K mean), on its test samples
        with torch.no_grad():
            logits = model.eval().modality_logits(m, data.test.features[m][rows]).mean(0)
        assert su["ausuc"] == pytest.approx(ausuc_by_sweep(logits, data.test.labels[rows], data.seen[m]), abs=1e-3)
    assert set(metrics["diagnostics"]["CSCF_uncalibrated"]) == METRIC_KEYS | GENERAL_KEYS
    ceiling = metrics["diagnostics"]["routing_ceiling"]
    assert ceiling["all"] >= min(ceiling["all[audio]"], ceiling["all[video]"]) and "routing ceiling" in report
    assert "## Unseen classes: calibration" in report and "![seen/unseen accuracy per modality](seen_unseen.png)" in report
    assert (root / "out" / "seen_unseen.png").read_bytes()[:4] == b"\x89PNG"


def test_second_run_recomputes_nothing(first_run, dataset):
    root, _ = first_run
    states = _run_flow(root, dataset)["states"]
    assert set(states.values()) == {"Cached"}, states


def test_new_seed_reuses_what_does_not_depend_on_it(first_run, dataset):
    root, _ = first_run
    states = _run_flow(root, dataset, seed=1)["states"]
    assert states["features"] == states["descriptions"] == states["class_embeddings"] == "Cached"
    assert states["split"] == states["train[CSCF]"] == states["evaluate"] == "Completed"


def test_deleted_output_is_rebuilt(first_run, dataset):
    root, _ = first_run
    for f in (root / "ws" / "split").glob("*.samples.parquet"):
        f.unlink()
    states = _run_flow(root, dataset)["states"]
    assert states["split"] == "Completed"
    assert states["train[CSCF]"] == "Cached"  # same split content -> same key downstream


def test_refresh_forces_one_stage(first_run, dataset):
    root, _ = first_run
    states = _run_flow(root, dataset, refresh=["class_embeddings"])["states"]
    assert states["class_embeddings"] == "Completed"
    assert states["features"] == states["train[CSCF]"] == "Cached"


def test_interrupted_training_resumes_from_last_checkpoint(first_run, dataset, monkeypatch, caplog, tmp_path):
    """Crash after the 2nd epoch checkpoint; the rerun resumes and ends where a clean run ends."""
    from tasks.training import train as train_stage
    from tasks.stages import TRAIN

    root, _ = first_run
    ws = root / "ws"
    keys = _run_flow(root, dataset)["keys"]
    params = _train_params(ws, keys)
    saved = []
    real_save = train_stage._save

    def crash_after_two(state, path):
        real_save(state, path)
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt("simulated crash")

    fresh = tmp_path / "ws"
    shutil.copytree(ws, fresh, ignore=shutil.ignore_patterns("train", "evaluate"))
    params["workspace"] = fresh
    monkeypatch.setattr(train_stage, "_save", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.run(params)
    key = TRAIN.key(params)
    assert not (fresh / "train" / f"{key}.pt").exists()
    assert max(p.name for p in (fresh / "train" / f"{key}.partial").iterdir()) == "epoch-0001.pt"
    monkeypatch.setattr(train_stage, "_save", real_save)
    with caplog.at_level("INFO", logger="cscf.train"):
        TRAIN.run(params)
    assert "resuming from epoch 2" in caplog.text
    resumed = torch.load(fresh / "train" / f"{key}.pt", weights_only=False)["model"]
    assert key == keys["train[CSCF]"]
    clean = torch.load(ws / "train" / f"{key}.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[k], clean[k]) for k in clean)


def test_choosing_the_margin_never_reads_the_test_split(first_run, dataset, tmp_path):
    """Training, margin choice and router fit included, gives the same model when every
    test-split feature is replaced by noise: nothing of the test split enters either."""
    import numpy as np
    import pyarrow as pa

    from tasks.store import catalog
    from tasks.stages import TRAIN

    root, _ = first_run
    ws = root / "ws"
    keys = _run_flow(root, dataset)["keys"]
    params = _train_params(ws, keys)
    poisoned = tmp_path / "ws"
    shutil.copytree(ws, poisoned, ignore=shutil.ignore_patterns("train", "evaluate"))
    features = catalog.stage_output(poisoned, "features", keys["features"])
    table = catalog.read_table(features)
    split = catalog.read_table(catalog.stage_output(ws, "split", keys["split"], ".samples.parquet")).to_pandas()
    test_ids = set(split.loc[split["split"] == "test", "sample_id"])
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=len(v)).tolist() if sid in test_ids else v
               for sid, v in zip(table["sample_id"].to_pylist(), table["vector"].to_pylist())]
    assert sum(sid in test_ids for sid in table["sample_id"].to_pylist()) > 0
    table = table.set_column(table.schema.get_field_index("vector"), "vector",
                             pa.array(vectors, type=table.schema.field("vector").type))
    catalog.write_table(table, features, table.schema)
    TRAIN.build(poisoned, "poisoned", **{k: v for k, v in params.items() if k != "workspace"})
    clean = torch.load(ws / "train" / f"{keys['train[CSCF]']}.pt", weights_only=False)["model"]
    trained = torch.load(poisoned / "train" / "poisoned.pt", weights_only=False)["model"]
    assert clean["margin"].abs().sum() > 0  # a margin was chosen, not left at 0
    assert any(k.startswith("router.gates.") for k in clean)  # and the learned router was fitted (issue 12)
    assert trained.keys() == clean.keys()
    assert all(torch.equal(trained[k], clean[k]) for k in clean)


def _train_params(ws: Path, keys: dict[str, str]) -> dict:
    """The CSCF training parameters of the first run, as the flow passed them."""
    from dataclasses import asdict

    from cscf_model import TrainConfig

    return {
        "workspace": ws,
        "features_key": keys["features"],
        "split_key": keys["split"],
        "embeddings_key": keys["class_embeddings"],
        "method": "CSCF",
        "model_overrides": {"top_k": 3},
        "train_config": asdict(TrainConfig(epochs=int(EPOCHS), seed=0)),
    }


def test_prompt_change_reruns_descriptions_and_what_follows(first_run, dataset, monkeypatch, tmp_path):
    """With an LLM (a real local HTTP server): a new template recomputes descriptions,
    class embeddings, training and evaluation; features and split stay cached."""
    from fake_llm_server import FakeLLMServer

    from flows.params import LLMParams

    root, _ = first_run
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    template = tmp_path / "prompt.txt"
    with FakeLLMServer() as server:
        llm = lambda text: LLMParams(mode="llm", template=str(template), base_url=server.base_url)  # noqa: E731
        template.write_text("Describe how {class_name} looks and sounds.")
        _run_flow(root, dataset, llm=llm(template.read_text()))
        requests = len(server.requests)
        template.write_text("In one sentence, what does {class_name} sound like?")
        states = _run_flow(root, dataset, llm=llm(template.read_text()))["states"]
    assert requests == 6 and len(server.requests) == 12  # one request per class, per template
    assert states["features"] == states["split"] == "Cached"
    assert all(states[s] == "Completed" for s in ("descriptions", "class_embeddings", "train[CSCF]", "evaluate"))


def test_validation_file_chooses_the_settings_that_model_report_and_predict_use(first_run, tmp_path, caplog, capsys):
    """`cscf run --validation FILE` on the first run's workspace: only the validate stage and the
    evaluation run; the choices reach model.json, metrics.json, report.md and `cscf predict`;
    a bad row is set aside and counted; without the option nothing of it appears."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cscf_model.router import scaled_weights
    from flows.cli import main
    from tasks.store.model_file import load_model
    from tiny_data import tiny_rows

    root, argv = first_run
    assert "validation" not in json.loads((root / "out" / "model" / "model.json").read_text())
    assert "validation_choices" not in json.loads((root / "out" / "metrics.json").read_text())["diagnostics"]
    # new samples around the training data's class centres, every class, both modalities
    rows = [r for r in tiny_rows(per_class=20) if int(r["sample_id"][-3:]) >= 16]
    validation = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist([*rows, {**rows[0], "sample_id": "stray", "class_name": "thunder"}]), validation)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="cscf.validation"):
        assert main(_with_out(argv, out) + ["--validation", str(validation)]) == 0
    assert "1 row(s) rejected: unknown class (e.g. sample_id ['stray'])" in caplog.text
    printed = capsys.readouterr().out
    assert "train[CSCF]=Cached" in printed and "validate=Completed" in printed and "evaluate=Completed" in printed
    record = json.loads((out / "model" / "model.json").read_text())["validation"]
    assert record["file_sha256"] == hashlib.sha256(validation.read_bytes()).hexdigest()
    assert (record["samples"], record["rejected_rows"]) == (24, {"unknown class": 1})
    candidates = record["candidates"]
    assert candidates["multimodal_samples"] == 24
    assert [(c["fusion"], c["top_k"], c["gate_mix"]) for c in candidates["fusion"]] == [
        ("gate", None, "product"), ("gate", None, "prior")] + [("csmf", k, None) for k in (1, 2, 3, 5, 6)]
    assert {m: (s["seen_samples"], s["unseen_samples"]) for m, s in candidates["margins"].items()} == {
        "audio": (12, 12), "video": (12, 12)}  # halves: each modality saw 3 of the 6 classes
    assert json.loads((out / "metrics.json").read_text())["diagnostics"]["validation_choices"] == record
    report = (out / "report.md").read_text()
    assert "## Choices made on validation data" in report
    assert ("Router gates: scaled as below" if candidates["gate_scaling"]["adopted"] else
            "Router gates: kept as trained (the scaling below was fitted, not adopted)") in report
    assert "chosen on validation data: " in printed
    # the exported model is the trained one with the choices applied, and nothing else changed
    chosen, before = record["chosen"], load_model(root / "out" / "model").model
    after = load_model(out / "model").model
    assert after.config == before.config.replace(fusion=chosen["fusion"], top_k=chosen["top_k"],
                                                 gate_mix=chosen["gate_mix"])
    assert after.margin.tolist() == [chosen["margins"][m] for m in ("audio", "video")]
    assert [chosen["margins"][m] != s["trained"] for m, s in candidates["margins"].items()] == [
        s["from_validation"] for s in candidates["margins"].values()]
    # the router's gates change only where their scaling was adopted, and then as recorded
    gates = candidates["gate_scaling"]
    scaled = {f"router.gates.{m}.weights" for m in range(2)} if gates["adopted"] else set()
    assert chosen["gate_scaling"] == ({m: {"slope": g["slope"], "shift": g["shift"]} for m, g in
                                       gates["per_modality"].items()} if gates["adopted"] else None)
    for m, name in enumerate(("audio", "video")):
        g = gates["per_modality"][name] if gates["adopted"] else {"slope": 1.0, "shift": 0.0}
        assert torch.allclose(after.router.gates[m].weights,
                              scaled_weights(before.router.gates[m].weights, g["slope"], g["shift"]))
    same = before.state_dict()
    assert all(torch.equal(t, same[k]) for k, t in after.state_dict().items() if k not in scaled | {"margin"})
    predictions = tmp_path / "predicted.parquet"
    assert main(["predict", "--model", str(out / "model"), "--features", str(validation), "--out", str(predictions),
                 "--workspace", str(root / "ws")]) == 0
    assert len(pd.read_parquet(predictions)) == 25


def test_a_bad_validation_file_is_one_line(first_run, tmp_path, capsys):
    """A missing file is refused before Prefect starts; a file with no usable row stops the run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.cli import main
    from tiny_data import tiny_rows

    root, argv = first_run
    missing = tmp_path / "missing.parquet"
    assert main(_with_out(argv, tmp_path / "out") + ["--validation", str(missing)]) == 1
    assert capsys.readouterr().err == f"cscf: error: {missing}: validation file not found\n"
    unknown = tmp_path / "unknown.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "class_name": "thunder"} for r in tiny_rows(per_class=1)]), unknown)
    assert main(_with_out(argv, tmp_path / "out") + ["--validation", str(unknown)]) == 1
    assert capsys.readouterr().err == (f"cscf: error: {unknown}: no usable validation rows left (12 rejected: "
                                       "see the warnings above)\n")


def _with_out(argv: list[str], out: Path) -> list[str]:
    """The first run's command line with another --out folder."""
    i = argv.index("--out")
    return [*argv[:i], "--out", str(out), *argv[i + 2:]]
