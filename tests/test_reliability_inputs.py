"""Bad inputs, untrusted files and what the user sees (issue 14): each case gives one clear
line naming the file, row or class, and usable data goes on. The slow cases (kills,
concurrent runs) are in test_reliability_runs.py; docs/reliability.md lists them all."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.store import catalog
from tasks.ingest.features import build_features, check_features_file, read_features
from tasks.store.inputs import InputError, read_classes
from tiny_data import CLASSES, tiny_rows, write_dataset

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ classes.csv and features


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "classes.csv: empty file, expected a 'class_name' column"),
        ("class_name\n", "classes.csv: no classes (a header and no rows)"),
        ("class_name,description\ndog,barks\n  ,meows\n", "classes.csv: empty class_name on row(s) [3]"),
        ("class_name\ndog\ncat\ndog\n", "classes.csv: duplicated class_name ['dog']"),
    ],
)
def test_bad_classes_csv_is_one_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "classes.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        read_classes(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_or_truncated_parquet_names_the_file(tmp_path, damage):
    features, _ = write_dataset(tmp_path / "in")
    data = features.read_bytes()
    features.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"PAR1" + b"\x00" * 200)
    with pytest.raises(InputError, match=r"features\.parquet: not readable as Parquet, corrupt or truncated"):
        check_features_file(features)
    with pytest.raises(InputError, match=r"features\.parquet: not readable as Parquet, corrupt or truncated"):
        read_features(features)


def test_corrupt_file_in_a_features_folder_is_named(tmp_path):
    folder = tmp_path / "shards"
    write_dataset(folder)
    (folder / "part-2.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"part-2\.parquet: not readable as Parquet"):
        check_features_file(folder)


def test_misspelled_class_is_rejected_with_the_close_match(tmp_path, caplog):
    rows = tiny_rows(per_class=3)
    for row in rows[:4]:
        row["class_name"] = "dog barkin"  # a typo of "dog barking"
    rows[4]["class_name"] = "zebra"
    features, classes = write_dataset(tmp_path / "in", rows)
    with caplog.at_level(logging.WARNING, logger="cscf.features"):
        build_features(tmp_path / "ws", "k", str(features), str(classes), 0)
    assert "class 'dog barkin' is not in classes.csv (4 row(s) rejected); did you mean 'dog barking'?" in caplog.text
    assert "class 'zebra' is not in classes.csv (1 row(s) rejected)\n" in caplog.text + "\n"
    rejected = catalog.read_table(catalog.stage_output(tmp_path / "ws", "features", "k", ".rejected.parquet"))
    assert rejected["reason"].to_pylist().count("unknown class") == 5
    good = catalog.read_table(catalog.stage_output(tmp_path / "ws", "features", "k"))
    assert len(good) == len(rows) - 5  # the usable rows go on


def test_class_without_samples_is_named(tmp_path, caplog):
    rows = [r for r in tiny_rows(per_class=3) if r["class_name"] != "car horn"]
    features, classes = write_dataset(tmp_path / "in", rows)
    with caplog.at_level(logging.WARNING, logger="cscf.features"):
        build_features(tmp_path / "ws", "k", str(features), str(classes), 0)
    assert "1 class(es) of classes.csv have no usable sample: ['car horn']" in caplog.text


def test_bad_rows_of_every_kind_are_counted_and_the_rest_goes_on(tmp_path, caplog):
    rows = tiny_rows(per_class=3)
    rows[0]["vector"][0] = float("nan")
    rows[1]["vector"][1] = float("inf")
    rows[2]["vector"] = rows[2]["vector"][:-1]
    rows.append(dict(rows[10]))  # duplicated (sample_id, modality)
    rows.append({**rows[11], "modality": ""})
    features, classes = write_dataset(tmp_path / "in", rows)
    with caplog.at_level(logging.WARNING, logger="cscf.features"):
        build_features(tmp_path / "ws", "k", str(features), str(classes), 0)
    rejected = catalog.read_table(catalog.stage_output(tmp_path / "ws", "features", "k", ".rejected.parquet"))
    counts = {r: rejected["reason"].to_pylist().count(r) for r in set(rejected["reason"].to_pylist())}
    assert counts == {"NaN or inf in vector": 2, "wrong vector length": 1, "duplicated (sample_id, modality)": 1,
                      "empty modality": 1}
    for reason, n in counts.items():
        assert f"{n} row(s) rejected: {reason}" in caplog.text
    good = catalog.read_table(catalog.stage_output(tmp_path / "ws", "features", "k"))
    assert len(good) == len(rows) - 5


# ------------------------------------------------------------------ class embeddings, LLM answers, manifests


@pytest.mark.parametrize(("vector", "why"), [(np.nan, "NaN or inf"), (0.0, "all zeros")])
def test_class_embeddings_with_nan_or_zero_vectors_name_the_class(vector, why):
    from tasks.semantics.embeddings import check_class_vectors

    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[1] = vector
    with pytest.raises(InputError, match=re.escape(f"class embeddings by minilm: 1 class vector(s) unusable: 'cat' ({why})")):
        check_class_vectors(["dog", "cat", "eel"], vectors, "class embeddings by minilm")
    check_class_vectors(["dog", "cat", "eel"], np.ones((3, 4), dtype=np.float32), "fine")


@pytest.mark.parametrize(("mode", "reason"), [("long", "answer too long (19999 characters, at most 4000)"),
                                              ("not_text", "answer is not text (content is int)"),
                                              ("empty", "empty answer")])
def test_unusable_llm_answer_is_retried_then_named(tmp_path, monkeypatch, mode, reason):
    import pandas as pd

    from fake_llm_server import FakeLLMServer
    from tasks.semantics.descriptions import DescriptionError, DescriptionSettings, generate_descriptions

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-inputs")
    (tmp_path / "prompt.txt").write_text("Describe {class_name}.")
    with FakeLLMServer() as server:
        settings = DescriptionSettings(mode="llm", template=tmp_path / "prompt.txt", base_url=server.base_url,
                                       timeout_s=2, max_retries=1, backoff_s=0.01)
        server.fail_matching("cat", mode)
        with pytest.raises(DescriptionError, match=re.escape(reason)) as failure:
            generate_descriptions(pd.DataFrame({"class_name": ["dog", "cat"]}), settings, tmp_path / "cache")
        assert "cat" in str(failure.value)
        assert sum("cat" in p for p in server.prompts) == 2  # retried once
        server.clear_failures()
        table = generate_descriptions(pd.DataFrame({"class_name": ["dog", "cat"]}), settings, tmp_path / "cache")
    assert table.num_rows == 2 and sum("dog" in p for p in server.prompts) == 1  # dog's answer was kept


def test_prompt_template_without_placeholder_is_refused(tmp_path):
    from tasks.semantics.descriptions import load_template

    (tmp_path / "prompt.txt").write_text("Describe the class.")
    with pytest.raises(ValueError, match=r"prompt template .*prompt\.txt: has no \{class_name\} placeholder"):
        load_template(tmp_path / "prompt.txt")


@pytest.mark.parametrize("path", ["../outside.mp4", "clips/../../outside.mp4", "/etc/passwd"])
def test_manifest_path_escaping_the_media_root_is_refused(tmp_path, path):
    from tasks.ingest.extract import read_manifest

    (tmp_path / "manifest.csv").write_text(f"sample_id,class_name,path\na,x,clips/a.mp4\nb,x,{path}\n")
    with pytest.raises(ValueError, match=re.escape(f"manifest.csv: row 2 (line 3): path {path!r} leaves the media root")):
        read_manifest(tmp_path / "manifest.csv")
    (tmp_path / "manifest.csv").write_text("sample_id,class_name,path\na,x,clips/../clips/a.mp4\n")
    assert read_manifest(tmp_path / "manifest.csv")["path"].tolist() == ["clips/../clips/a.mp4"]


def test_truncated_media_is_a_media_error_not_a_crash(tmp_path):
    from media_fixtures import write_clip
    from tasks.ingest.media import MediaError, decode_audio, decode_frames

    clip = write_clip(tmp_path / "c.mp4", seed=0, audio_rate=16000)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    for decode in (lambda p: decode_frames(p, 2), lambda p: decode_audio(p, 16000)):
        with pytest.raises(MediaError):
            decode(cut)
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty file"):
        decode_frames(tmp_path / "zero.mp4")


# ------------------------------------------------------------------ untrusted files


class _Payload:
    """Unpickling this runs code: it creates the file named `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_planted_checkpoint_is_refused_without_running_its_code(tmp_path):
    from tasks.training.train import latest_checkpoint

    marker = tmp_path / "code-ran"
    partial = tmp_path / "ws" / "train" / "k.partial"
    partial.mkdir(parents=True)
    torch.save({"epoch": 0, "model": {}, "payload": _Payload(marker)}, partial / "epoch-0000.pt")
    with pytest.raises(ValueError, match=r"epoch-0000\.pt: not a checkpoint of tensors and plain values"):
        latest_checkpoint(tmp_path / "ws", "k")
    assert not marker.exists()


def test_nothing_loads_a_workspace_file_with_weights_only_false():
    """Every torch.load of the pipeline's own code passes weights_only=True; pickle only
    where docs/usage.md says the format is a pickle (ClipClap-GZSL features)."""
    offenders, pickles = [], []
    for package in ("tasks", "flows", "cscf_model", "benchmarks"):
        for f in (ROOT / package).rglob("*.py"):
            text = f.read_text()
            offenders += [f"{f.name}: {line.strip()}" for line in text.splitlines()
                          if "torch.load(" in line and "weights_only=True" not in line]
            if re.search(r"\bpickle\.loads?\(", text):
                pickles.append(f.name)
    assert offenders == []
    assert pickles == ["published_features.py"]
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert "pickles" in usage and "trusted source" in usage


# ------------------------------------------------------------------ what the user sees


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "classes.csv").write_text(""), "classes.csv: empty file, expected a 'class_name' column"),
        (lambda d: (d / "features.parquet").write_bytes(b"PAR1 truncated"), "features.parquet: not readable as Parquet"),
    ],
)
def test_cli_input_error_is_one_line_before_prefect_starts(tmp_path, capsys, monkeypatch, make, message):
    """No Prefect server is started (the check runs first) and no traceback is printed."""
    from flows.cli import main
    from flows.runtime import TemporaryServer

    features, classes = write_dataset(tmp_path)
    make(tmp_path)
    started = []
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(TemporaryServer, "start", lambda self, *a, **k: started.append(self))
    rc = main(["run", "--features", str(features), "--classes", str(classes), "--workspace", str(tmp_path / "ws"),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and started == []
    assert err.count("\n") == 1 and err.startswith("cscf: error: ") and message in err, err


@pytest.mark.slow
def test_input_error_inside_a_stage_prints_no_traceback(tmp_path, prefect_server):
    """A bad input only a stage can see (every row rejected): the real `cscf run` fails with
    the one-line error last on stderr, Prefect's state lines before it, and no traceback."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    rows = [{**r, "class_name": "unknown"} for r in tiny_rows(per_class=2)]
    features, classes = write_dataset(tmp_path, rows)
    cmd = [sys.executable, "-m", "flows.cli", "run", "--features", str(features), "--classes", str(classes),
           "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "out"), "--epochs", "1"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cscf: error: ") and "no usable rows left" in last, done.stderr


# ------------------------------------------------------------------ provenance


def test_provenance_names_code_encoder_and_template(tmp_path, monkeypatch):
    """The description and class-embedding stages leave what wrote them; `provenance` (the
    "provenance" object of metrics.json) gathers it with the code version."""
    from tasks.semantics import embeddings
    from tasks.stages import CLASS_EMBEDDINGS, DESCRIPTIONS
    from flows.params import LLMParams
    from tasks.semantics.descriptions import DescriptionSettings
    from tasks.store.provenance import provenance

    _, classes = write_dataset(tmp_path / "in")
    llm = LLMParams(mode="offline")
    fingerprint = DescriptionSettings(**{**llm.model_dump(), "template": Path(llm.template)}).cache_fields()
    ws = tmp_path / "ws"
    d_key = DESCRIPTIONS.run({"workspace": ws, "classes": str(classes), "settings": llm.model_dump(),
                              "fingerprint": fingerprint})
    monkeypatch.setattr(embeddings, "build_text_encoder", lambda spec: spec)
    monkeypatch.setattr(embeddings, "embed_descriptions", lambda enc, texts: np.eye(len(texts), 8, dtype=np.float32))
    e_key = CLASS_EMBEDDINGS.run({"workspace": ws, "descriptions_key": d_key, "encoder": "minilm"})
    record = provenance(ws, e_key)
    assert record["text_encoder"] == "minilm"
    assert record["descriptions"] == json.loads(json.dumps(fingerprint))
    assert "offline_writer_sha256" in record["descriptions"]
    assert record["code"]["package"] == "0.1.0" and len(record["code"]["source_sha256"]) == 64

    monkeypatch.setattr(embeddings, "embed_descriptions", lambda enc, texts: np.zeros((len(texts), 8), np.float32))
    with pytest.raises(InputError, match=re.escape("class embeddings by minilm: 6 class vector(s) unusable: "
                                                   f"{CLASSES[0]!r} (all zeros)")):
        embeddings.build_class_embeddings(ws, "zeros", d_key, "minilm")
