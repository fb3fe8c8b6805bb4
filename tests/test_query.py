"""DuckDB views over stage outputs (tasks/store/query.py) and `cscf query`, with the queries of docs/usage.md and README.md as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.store.query import VIEWS, connect, views
from tiny_data import CLASSES, write_dataset

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
PER_CLASS = 16  # tiny_data's samples per class


@pytest.fixture(scope="module")
def workspace(prefect_server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace of one real `cscf run` on the tiny dataset."""
    from flows.cli import main

    root = tmp_path_factory.mktemp("query")
    features, classes = write_dataset(root / "data")
    assert main(["run", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video",
                 "--out", str(root / "out"), "--workspace", str(root / "ws"), "--epochs", "2"]) == 0
    assert main(["predict", "--model", str(root / "out" / "model"), "--features", str(features),
                 "--out", str(root / "predicted.parquet"), "--workspace", str(root / "ws")]) == 0  # view `predicted`
    return root / "ws"


def readme_queries() -> list[str]:
    """The SQL of every `cscf query "..."` code block in docs/usage.md's DuckDB section, in order."""
    section = USAGE.read_text().split("## Querying cached outputs with DuckDB")[1].split("\n## ")[0]
    return re.findall(r'```bash\ncscf query "(.*?)"\n```', section, flags=re.S)


def query(capsys: pytest.CaptureFixture, workspace: Path, sql: str, fmt: str = "json") -> str:
    from flows.cli import main

    capsys.readouterr()
    assert main(["query", sql, "--workspace", str(workspace), "--format", fmt]) == 0
    return capsys.readouterr().out


def test_every_stage_has_a_view_with_its_key(workspace):
    con = connect(workspace)
    assert views(con) == sorted(VIEWS)
    keys = {p.name.split(".")[0] for p in (workspace / "features").glob("*.parquet")}
    assert con.sql("select distinct key from features").fetchall() == [(k,) for k in keys]
    assert con.execute("select count(*) from features").fetchall() == [(2 * PER_CLASS * len(CLASSES),)]
    assert con.execute("select count(*) from rejected").fetchall() == [(0,)]
    metrics = json.loads((workspace.parent / "out" / "metrics.json").read_text())
    rows = con.sql("select method, subset, accuracy, dataset, seed from metrics").fetchall()
    assert {(m, s): a for m, s, a, _, _ in rows} == {
        (m, s): a for m, scores in metrics["methods"].items() for s, a in scores.items()
    }
    assert {(d, seed) for *_, d, seed in rows} == {("features", 0)}


def test_stages_without_outputs_have_no_view(tmp_path):
    from tasks.stages import FEATURES

    assert views(connect(tmp_path)) == []
    features, classes = write_dataset(tmp_path / "data")
    FEATURES.run({"workspace": tmp_path / "ws", "features": str(features), "classes": str(classes), "default_seed": 0})
    assert views(connect(tmp_path / "ws")) == ["features", "rejected"]


def test_readme_counts_per_class_and_modality(workspace, capsys):
    counts = json.loads(query(capsys, workspace, readme_queries()[0]))
    assert counts == [{"class_name": c, "audio": PER_CLASS, "video": PER_CLASS} for c in sorted(CLASSES)]


def test_readme_nearest_classes(workspace, capsys):
    import numpy as np

    rows = json.loads(query(capsys, workspace, readme_queries()[1]))
    con = connect(workspace)
    names, vectors = zip(*con.sql("select class_name, vector from class_embeddings").fetchall())
    sim = np.array(vectors) @ np.array(vectors).T  # the vectors are L2-normalised
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    assert {r["class_name"]: r["nearest"] for r in rows} == {names[i]: names[j] for i, j in enumerate(nearest)}
    by_class = {r["class_name"]: r["cosine"] for r in rows}
    assert [by_class[n] for n in names] == pytest.approx(sim.max(1), abs=1e-3)
    assert [r["cosine"] for r in rows] == sorted((r["cosine"] for r in rows), reverse=True)


def test_readme_per_class_accuracy_of_the_last_run(workspace, capsys):
    rows = json.loads(query(capsys, workspace, readme_queries()[2]))
    assert sorted(r["true_class"] for r in rows) == sorted(CLASSES)
    metrics = json.loads((workspace.parent / "out" / "metrics.json").read_text())
    overall = sum(r["accuracy"] * r["n"] for r in rows) / sum(r["n"] for r in rows)
    assert overall == pytest.approx(metrics["methods"]["CSCF"]["A_all+B_all"], abs=0.1)


def test_csv_and_table_formats(workspace, capsys):
    csv = query(capsys, workspace, "select subset, accuracy from metrics where method = 'CSCF' order by subset", "csv")
    assert csv.splitlines()[0] == "subset,accuracy"
    assert len(csv.splitlines()) == 1 + 8 + 7  # the paper's 7 subsets and acc_mix, plus the general ones (issue 10)
    table = query(capsys, workspace, "select count(*) as n_predictions from predictions", "table")
    assert "n_predictions" in table


def test_unknown_view_names_the_views_there(tmp_path, capsys):
    from flows.cli import main

    assert main(["query", "select * from predictions", "--workspace", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "predictions does not exist" in err and "views in" in err and ": none" in err
    assert main(["query", "select 1", "--workspace", str(tmp_path / "missing")]) == 1
    assert "missing: no such workspace folder" in capsys.readouterr().err


def test_readme_front_door_queries(workspace, capsys):
    first, second = re.findall(r'^cscf query "(.*?)"', (USAGE.parents[1] / "README.md").read_text(), flags=re.M)
    metrics = json.loads((workspace.parent / "out" / "metrics.json").read_text())
    cscf = json.loads(query(capsys, workspace, first))
    assert {r["subset"]: r["accuracy"] for r in cscf} == metrics["methods"]["CSCF"]
    assert query(capsys, workspace, second, "csv").splitlines() == ["modality,rows", f"audio,{PER_CLASS * len(CLASSES)}",
                                                                    f"video,{PER_CLASS * len(CLASSES)}"]
