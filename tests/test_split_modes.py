"""Seen sets from the data, from a file or by the paper's halves; M modalities end to end (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.store.inputs import InputError
from tasks.training.split import check_seen, read_seen_file, resolve_seen, split_classes
from test_pipeline import check_accuracies, evaluation_outputs, routing_from_predictions
from tiny_data import CLASSES, HETERO_CLASSES, HETERO_SEEN, hetero_rows, write_dataset

NAMES = [f"class {i}" for i in range(9)]
REFERENCE = Path(__file__).parent / "data" / "default_seed0_e5_before_seen_modes.json"


def _train_rows(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"sample_id": f"s{i}", "modality": m, "class_name": c} for i, (m, c) in enumerate(pairs)])


def test_halves_with_two_groups_is_the_papers_split() -> None:
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(NAMES))
        a = [NAMES[i] for i in sorted(order[:5])]  # A_s gets the extra class when N is odd
        assert split_classes(NAMES, 2, seed) == [a, [c for c in NAMES if c not in a]]


def test_halves_with_three_groups_and_overlap() -> None:
    groups = split_classes(NAMES, 3, seed=1, overlap=1 / 3)
    shared = set(groups[0]) & set(groups[1]) & set(groups[2])
    assert len(shared) == 3  # round(9 / 3) classes seen by every modality
    own = [set(g) - shared for g in groups]
    assert [len(o) for o in own] == [2, 2, 2] and not (own[0] & own[1] or own[1] & own[2] or own[0] & own[2])
    assert set().union(*groups) == set(NAMES)


def test_auto_picks_data_when_a_modality_has_part_of_the_classes() -> None:
    names = NAMES[:3]
    hetero = _train_rows([("a", names[0]), ("a", names[1]), ("b", names[1]), ("b", names[2])])
    seen, why = resolve_seen("auto", 0.0, None, hetero, ["a", "b"], names, seed=0)
    assert seen == {"a": names[:2], "b": names[1:]} and why.startswith("data (auto: modality 'a'")
    paired = _train_rows([(m, c) for c in names for m in ("a", "b")])
    seen, why = resolve_seen("auto", 0.0, None, paired, ["a", "b"], names, seed=0)
    assert why.startswith("halves") and sorted(seen["a"] + seen["b"]) == sorted(names)


def test_seen_file_names_the_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "seen.csv"
    path.write_text("modality,class_name\na,class 0\nsound,class 1\n")
    with pytest.raises(InputError, match=r"seen.csv: row 3 names unknown modality 'sound'"):
        read_seen_file(path, ["a", "b"], NAMES)
    path.write_text("modality,class_name\na,class 0\nb,clas 1\n")
    with pytest.raises(InputError, match=r"row 3 names unknown class name 'clas 1'"):
        read_seen_file(path, ["a", "b"], NAMES)
    path.write_text("modality\na\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['class_name'\]"):
        read_seen_file(path, ["a", "b"], NAMES)


def test_a_modality_with_one_trained_class_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    rows = _train_rows([("a", NAMES[0]), ("a", NAMES[1]), ("b", NAMES[2])])
    with pytest.raises(InputError, match=r"modality 'b' has training rows for 1 seen class\(es\)"):
        check_seen({"a": NAMES[:2], "b": NAMES[2:3]}, rows, NAMES[:3], "features.parquet")
    rows = _train_rows([("a", NAMES[0]), ("a", NAMES[1]), ("b", NAMES[1]), ("b", NAMES[2])])
    with caplog.at_level("WARNING", logger="cscf.split"):
        check_seen({"a": NAMES[:2], "b": NAMES[1:3]}, rows, NAMES[:4], "features.parquet")
    assert "1 class(es) seen by no modality" in caplog.text and NAMES[3] in caplog.text


@pytest.fixture(scope="module")
def hetero(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("hetero"), hetero_rows(), HETERO_CLASSES)


def _run(features: Path, classes: Path, root: Path, *extra: str) -> dict:
    from flows.cli import main

    argv = ["run", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video,text",
            "--epochs", "3", "--out", str(root / "out"), "--workspace", str(root / "ws"), *extra]
    assert main(argv) == 0
    return json.loads((root / "out" / "metrics.json").read_text())


@pytest.fixture
def split_log() -> list[str]:
    """Messages of the split stage's logger (Prefect's logging setup stops caplog from seeing them)."""
    import logging

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("cscf.split")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_three_modalities_from_the_data_and_from_a_file_agree(hetero, prefect_server, tmp_path, split_log) -> None:
    """Unpaired training rows, overlapping seen sets, a class seen by no one: `--seen data`
    (chosen by auto) and `--seen FILE` give the same seen sets and the same metrics."""
    features, classes = hetero
    by_data = _run(features, classes, tmp_path / "data")
    log = "\n".join(split_log)
    assert "seen sets: data (auto: modality 'audio' has train rows for 4 of 7 classes)" in log
    assert "1 class(es) seen by no modality" in log
    expected = {m: [HETERO_CLASSES[c] for c in cs] for m, cs in HETERO_SEEN.items()}
    assert by_data["classes"]["seen"] == expected and "A_seen" not in by_data["classes"]
    seen_csv = next((tmp_path / "data" / "ws" / "split").glob("*.seen.csv"))
    by_file = _run(features, classes, tmp_path / "file", "--seen", str(seen_csv))
    assert by_file["classes"] == by_data["classes"] and by_file["methods"] == by_data["methods"]
    cscf = by_data["methods"]["CSCF"]
    for key in ("audio_s", "video_u", "text_s", "all", "all[audio+text]", "all[none]", "given[audio+video]", "acc_mix"):
        assert cscf[key] is not None, key
    # every score (these general subsets included) is the accuracy counted from the
    # predictions the run wrote, and acc_mix their mean over <m>_s, <m>_u and all[...]
    _, predictions = evaluation_outputs(tmp_path / "data" / "ws", tmp_path / "data" / "out")
    check_accuracies(by_data, predictions)
    sizes = by_data["diagnostics"]["subset_sizes"]
    assert sizes["all"] == 7 * 4 and sizes["given[audio+video]"] == 7 * 2  # every 3rd test sample lacks text
    assert cscf["audio_s"] > 60 and cscf["text_s"] > 60  # seen classes learned in 3 epochs of easy data
    report = (tmp_path / "data" / "out" / "report.md").read_text()
    assert "| all[audio+text]" in report or "all[audio+text] |" in report
    assert "`text` (C, 2 seen classes)" in report and "routing ceiling" in report
    check_routing_by_pattern(by_data, predictions, report)


def check_routing_by_pattern(metrics: dict, predictions: pd.DataFrame, report: str) -> None:
    """diagnostics.routing_by_pattern: per all[<who>] subset, CSCF's routing accuracy counted
    from its prediction rows (its learned router's dominant modality), its accuracy, the
    routing ceiling and the number of samples; the report's table and run_summary show them."""
    from tasks.evaluation.report import run_summary

    d = metrics["diagnostics"]
    by_pattern, seen = d["routing_by_pattern"], metrics["classes"]["seen"]
    patterns = [k for k in metrics["methods"]["CSCF"] if k.startswith("all[")]
    assert list(by_pattern) == patterns and sum(p["samples"] for p in by_pattern.values()) == d["subset_sizes"]["all"]
    for k, p in by_pattern.items():
        n = int(((predictions["method"] == "CSCF") & (predictions["subset"] == k)).sum())
        assert p["samples"] == n == d["subset_sizes"][k], k
        assert p["accuracy"] == metrics["methods"]["CSCF"][k] and p["ceiling"] == d["routing_ceiling"][k], k
        if k == "all[none]":
            assert p["routing"] is None
        else:
            assert p["routing"] == pytest.approx(routing_from_predictions(predictions, seen, "CSCF", k), abs=1e-4), k
    assert d["router_routing_accuracy"] == pytest.approx(routing_from_predictions(predictions, seen, "CSCF", "all"), abs=1e-4)
    assert "## Routing per seen pattern" in report
    lines = run_summary(metrics, {"metrics.json": "out/metrics.json"}).splitlines()
    assert f"CSCF routing accuracy (learned router): {d['router_routing_accuracy']:.2f} %" in lines
    assert not any(line.startswith("DMSS routing") for line in lines)
    fmt = lambda x: "-" if x is None else f"{x:.2f} %"  # noqa: E731
    expected = [f"  {k}: routing {fmt(p['routing'])}, accuracy {fmt(p['accuracy'])}, ceiling {fmt(p['ceiling'])} "
                f"({p['samples']} samples)" for k, p in by_pattern.items()]
    sets = [set(v) for v in seen.values()]
    overlapping = len(sets) > 2 or bool(sets[0] & sets[1])
    # one line per pattern after the routing line, only with more than two modalities or overlapping sets
    assert [line for line in lines if line.startswith("  all[")] == (expected if overlapping else [])


def gzsl_from_predictions(predictions: pd.DataFrame, seen: list[str], method: str) -> tuple[float, float]:
    """(S, U) counted from a method's prediction rows of the `all` subset: percent right among
    the rows whose true class is in `seen`, and among the others."""
    rows = predictions[(predictions["method"] == method) & (predictions["subset"] == "all")]
    right = rows["true_class"] == rows["predicted_class"]
    own = rows["true_class"].isin(seen)
    return 100.0 * right[own].mean(), 100.0 * right[~own].mean()


def test_same_seen_classes_for_every_modality_add_s_u_h(prefect_server, tmp_path) -> None:
    """AV-GZSL: `--seen FILE` giving audio and video the same 4 of 6 classes. Every method has
    S, U and H (on the samples showing both modalities); the default halves protocol has none."""
    from flows.cli import main

    features, classes = write_dataset(tmp_path / "data")
    seen = tmp_path / "seen.csv"
    seen.write_text("modality,class_name\n" + "".join(f"{m},{c}\n" for m in ("audio", "video") for c in CLASSES[:4]))
    common = ["--features", str(features), "--classes", str(classes), "--modalities", "audio,video", "--epochs", "2",
              "--workspace", str(tmp_path / "ws")]
    assert main(["run", *common, "--seen", str(seen), "--out", str(tmp_path / "gzsl")]) == 0
    metrics, predictions = evaluation_outputs(tmp_path / "ws", tmp_path / "gzsl")
    assert metrics["classes"]["seen"] == {"audio": CLASSES[:4], "video": CLASSES[:4]}
    check_accuracies(metrics, predictions)
    for method, scores in metrics["methods"].items():
        s, u, h = scores["S"], scores["U"], scores["H"]
        assert (s, u) == pytest.approx(gzsl_from_predictions(predictions, CLASSES[:4], method), abs=1e-4), method
        assert h == pytest.approx(2 * s * u / (s + u) if s + u else 0.0), method
    cscf = metrics["methods"]["CSCF"]
    assert metrics["diagnostics"]["subset_sizes"]["all"] == 30  # 6 classes x 5 test samples, both modalities
    report = (tmp_path / "gzsl" / "report.md").read_text()
    assert "## Generalized zero-shot" in report
    section = report.split("## Generalized zero-shot")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("| ").split("|")] for line in section.splitlines() if line.startswith("| ")]
    assert [r for r in rows if r[0] == "CSCF"] == [["CSCF", f"{cscf['S']:.2f}", f"{cscf['U']:.2f}", f"{cscf['H']:.2f}"]]
    check_routing_by_pattern(metrics, predictions, report)

    assert main(["run", *common, "--seen", "halves", "--out", str(tmp_path / "halves")]) == 0
    halves, predictions = evaluation_outputs(tmp_path / "ws", tmp_path / "halves")
    assert not set(halves["classes"]["A_seen"]) & set(halves["classes"]["B_seen"])
    assert all(not {"S", "U", "H"} & set(scores) for scores in halves["methods"].values())
    report = (tmp_path / "halves" / "report.md").read_text()
    assert "## Generalized zero-shot" not in report
    # the per-pattern routing is the learned router's (on this run DMSS, B+O+D, routes differently)
    check_routing_by_pattern(halves, predictions, report)


def test_one_trained_class_stops_before_training(hetero, prefect_server, tmp_path, capsys) -> None:
    from flows.cli import main

    features, classes = hetero
    seen = tmp_path / "seen.csv"
    seen.write_text("modality,class_name\naudio,dog barking\naudio,cat meowing\nvideo,car horn\n")
    argv = ["run", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video",
            "--seen", str(seen), "--epochs", "1", "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    assert "modality 'video' has training rows for 1 seen class(es) ['car horn']; it needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "train").exists()


def test_default_halves_reproduces_the_metrics_before_seen_modes(prefect_server, tmp_path, monkeypatch) -> None:
    """The embedded default with two disjoint modalities (--seen halves), against the
    metrics.json that the code before seen modes wrote for the same seed and epochs.

    Equal, key for key: the seen sets, the baseline B, every bimodal subset of the
    methods on CSCF's weights (the paper's DMSS + CSMF recipe is now `B+O+D+C`, since the
    learned router became CSCF's default), DMSS routing, and every unimodal subset without
    calibration. What moved on purpose: the calibration margins, whose pseudo-unseen
    training is now seeded from the run's seed instead of the global RNG state (so a
    resumed run gives the same margins), and with them the calibrated unimodal subsets.
    Training takes the fp32 step of before issue 22 (benchmarks.train.reference_loss) and
    holds its vectors in fp32 (--precision fp32): issue 22's bf16 arithmetic and storage and
    batched mappers change training's arithmetic, not what this pins.
    """
    from benchmarks.train import reference_loss, reference_optimizer
    from cscf_model import trainer
    from flows.cli import main

    monkeypatch.setattr(trainer, "batch_loss", reference_loss)
    monkeypatch.setattr(trainer, "make_optimizer", reference_optimizer)

    assert main(["run", "--seen", "halves", "--epochs", "5", "--seed", "0", "--precision", "fp32",
                 "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "out")]) == 0
    now = json.loads((tmp_path / "out" / "metrics.json").read_text())
    before = json.loads(REFERENCE.read_text())
    for who in ("A_seen", "B_seen"):
        assert now["classes"][who] == before["classes"][who]
    bimodal = ("A_s+B_u", "A_u+B_s", "A_all+B_all")
    assert {k: now["methods"]["B"][k] for k in before["methods"]["B"]} == before["methods"]["B"]
    for method, renamed in (("B+O", "B+O"), ("B+O+D", "B+O+D"), ("CSCF", "B+O+D+C")):
        assert {k: now["methods"][renamed][k] for k in bimodal} == {k: before["methods"][method][k] for k in bimodal}
    for key in ("dmss_routing_accuracy", "dmss_routing_accuracy_A_s+B_u", "dmss_routing_accuracy_A_u+B_s"):
        assert now["diagnostics"][key] == before["diagnostics"][key], key
    unimodal = ("A_s", "B_s", "A_u", "B_u")
    assert ({k: now["diagnostics"]["CSCF_uncalibrated"][k] for k in unimodal}
            == {k: before["diagnostics"]["CSCF_uncalibrated"][k] for k in unimodal})
    for modality, was in before["diagnostics"]["seen_unseen"].items():
        for key in ("ausuc", "seen_acc_uncalibrated", "unseen_acc_uncalibrated", "cosine_rule_unseen_acc"):
            assert now["diagnostics"]["seen_unseen"][modality][key] == was[key], (modality, key)


def test_benchmark_runs_three_modalities_with_multi_view_baselines(hetero, prefect_server, tmp_path) -> None:
    """`cscf benchmark` on three heterogeneous modalities: CSCF, its ablations and two
    multi-view baselines share the general subsets; the report has one column per modality."""
    from flows.cli import main

    features, classes = hetero
    out = tmp_path / "bench"
    assert main(["benchmark", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video,text",
                 "--seeds", "0", "--methods", "TMC,UVaT", "--epochs", "2", "--out", str(out),
                 "--workspace", str(tmp_path / "ws")]) == 0
    metrics = json.loads((out / "seed-0" / "metrics.json").read_text())
    assert {"CSCF", "B+O", "TMC", "UVaT"} <= set(metrics["methods"])
    for method in ("TMC", "UVaT"):
        assert {"audio_s", "text_u", "all", "all[audio+text]", "given[audio+video]", "acc_mix"} <= set(metrics["methods"][method])
    report = (out / "report.md").read_text()
    assert "| UVaT" in report and "text_u" in report and "routing ceiling" in report
