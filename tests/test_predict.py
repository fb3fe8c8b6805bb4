"""`cscf predict` (issue 11): the model folder, predictions identical to the evaluation's,
streaming, open vocabulary, and bad inputs as one-line errors with no output left."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.store import catalog
from tasks.store.inputs import InputError
from tasks.store.model_file import FORMAT_VERSION, META, WEIGHTS, TrainedModel, checksums, load_model
from tasks.serving.predict import check_predict_input, open_parquet, predict_file, record_batches
from tiny_data import CLASSES, write_dataset


@pytest.fixture(scope="module")
def run(prefect_server, tmp_path_factory) -> Path:
    """One tiny `cscf run --out DIR` (4 epochs); its DIR/model is what every test predicts with."""
    from flows.cli import main

    root = tmp_path_factory.mktemp("predict")
    features, classes = write_dataset(root / "in")
    assert main(["run", "--features", str(features), "--classes", str(classes), "--modalities", "audio,video",
                 "--seed", "0", "--out", str(root / "out"), "--workspace", str(root / "ws"), "--epochs", "4"]) == 0
    return root


def _features(run: Path) -> pd.DataFrame:
    return pq.read_table(run / "in" / "features.parquet").to_pandas()


def _write(rows: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False), path)
    return path


def _predict_cli(run: Path, features: Path, out: Path, *extra: str) -> int:
    from flows.cli import main

    return main(["predict", "--model", str(run / "out" / "model"), "--features", str(features), "--out", str(out),
                 "--workspace", str(run / "ws"), *extra])


def test_model_folder_rebuilds_the_trained_model_without_unpickling(run):
    folder = run / "out" / "model"
    meta = json.loads((folder / META).read_text())
    checkpoints = [torch.load(p, weights_only=False) for p in (run / "ws" / "train").glob("*.pt")]
    checkpoint = next(c for c in checkpoints if c["config"]["name"] == "CSCF")
    trained = load_model(folder)
    assert meta["format_version"] == FORMAT_VERSION and [m["name"] for m in meta["modalities"]] == ["audio", "video"]
    assert set(meta["checksums"][META]) == set(meta) - {"checksums"}
    assert {m["name"]: m["dim"] for m in meta["modalities"]} == {"audio": 16, "video": 12}
    assert sorted(meta["seen"]["audio"] + meta["seen"]["video"]) == sorted(CLASSES)
    assert meta["class_embeddings"]["encoder"] == "minilm" and meta["descriptions"]["mode"] == "offline"
    assert set(meta["calibration"]) == {"audio", "video"} and meta["model_config"]["name"] == "CSCF"
    assert meta["train_config"]["epochs"] == 4 and meta["extraction"] is None
    state = trained.model.state_dict()
    for name in ("class_emb", "seen", "margin", "aligned", "in_mean_0", "in_std_1"):
        assert name in state
    assert trained.model.seen.shape == (2, len(CLASSES)) and not trained.model.training
    assert checkpoint["model"].keys() == state.keys()
    # the weights file is safetensors: an 8-byte header length, then a JSON header, no pickle
    raw = (folder / WEIGHTS).read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["class_emb"]["shape"] == [len(CLASSES), 384]


def test_predict_reproduces_the_evaluation_predictions_exactly(run, tmp_path):
    """Every CSCF row of the evaluation (bimodal and unimodal subsets), labels removed."""
    evaluation = pq.read_table(next((run / "ws" / "evaluate").glob("*.predictions.parquet"))).to_pandas()
    evaluation = evaluation[evaluation["method"] == "CSCF"]
    features = _features(run).drop(columns=["class_name"])
    trained = load_model(run / "out" / "model")
    checked, unimodal = 0, 0
    for subset, rows in evaluation.groupby("subset"):
        present = [math.isfinite(u) for u in rows["u"].iloc[0]]  # DMSS gives absent modalities u = inf
        shown = [m for m, p in zip(trained.modalities, present) if p]
        inputs = features[features["sample_id"].isin(rows["sample_id"]) & features["modality"].isin(shown)]
        out = tmp_path / f"{subset}.parquet"
        predict_file(trained, _write(inputs, tmp_path / f"in-{subset}.parquet"), out)
        predicted = pq.read_table(out).to_pandas().set_index("sample_id")
        assert predicted["modalities"].map(lambda m: list(m) == shown).all(), subset
        expected = rows.set_index("sample_id")["predicted_class"]
        assert predicted.loc[expected.index, "predicted_class"].tolist() == expected.tolist(), subset
        checked += len(rows)
        unimodal += len(rows) if len(shown) == 1 else 0
    assert checked == len(evaluation) and unimodal > 0


def test_cli_writes_contract_output_summary_and_query_view(run, tmp_path):
    from tasks.store.query import connect

    out = tmp_path / "pred.parquet"
    assert _predict_cli(run, run / "in" / "features.parquet", out, "--top-k", "3") == 0
    table = pq.read_table(out)
    assert table.schema.equals(catalog.PREDICTED)
    df = table.to_pandas()
    assert len(df) == _features(run)["sample_id"].nunique()
    assert df["top_k"].map(len).eq(3).all() and df["probability"].between(0, 1).all()
    assert (df["predicted_class"] == df["top_k"].map(lambda t: t[0]["class_name"])).all()
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert set(summary["accuracy_by_modalities"]) == {"audio+video"} and summary["labelled"] == len(df)
    n = connect(run / "ws").sql("select count(*) from predicted").fetchall()[0][0]
    assert n >= len(df)


def _reference(run: Path, tmp_path: Path) -> tuple[TrainedModel, pd.DataFrame, pd.DataFrame]:
    """The model, the input rows, and its predictions of them in one batch, by sample_id."""
    trained = load_model(run / "out" / "model")
    reference = tmp_path / "reference.parquet"
    predict_file(trained, run / "in" / "features.parquet", reference)
    return trained, _features(run), pq.read_table(reference).to_pandas().set_index("sample_id").sort_index()


def test_streaming_small_batches_unsorted_rows_and_a_folder_give_the_same_predictions(run, tmp_path):
    trained, features, expected = _reference(run, tmp_path)
    # rows of a sample far apart (modality by modality), in batches of 7 rows: grouped by DuckDB first
    shuffled = _write(features.sample(frac=1.0, random_state=0), tmp_path / "shuffled.parquet")
    out = tmp_path / "shuffled-out.parquet"
    tally = predict_file(trained, shuffled, out, batch_rows=7)
    got = pq.read_table(out).to_pandas().set_index("sample_id").sort_index()
    assert tally.samples == len(expected)
    pd.testing.assert_series_equal(got["predicted_class"], expected["predicted_class"])
    np.testing.assert_allclose(got["probability"], expected["probability"], rtol=1e-5)
    # a folder of files: one task per file, joined into one output
    folder = tmp_path / "parts"
    ids = sorted(features["sample_id"].unique())
    for i, chunk in enumerate(np.array_split(ids, 3)):
        _write(features[features["sample_id"].isin(chunk)], folder / f"f{i}.parquet")
    out = tmp_path / "folder-out.parquet"
    assert _predict_cli(run, folder, out) == 0
    got = pq.read_table(out).to_pandas().set_index("sample_id").sort_index()
    pd.testing.assert_series_equal(got["predicted_class"], expected["predicted_class"])


def test_samples_showing_one_modality_and_bad_rows(run, tmp_path):
    trained = load_model(run / "out" / "model")
    features = _features(run)
    one = features[(features["modality"] == "audio") | features["sample_id"].str.startswith("dog")]
    bad = features.iloc[:1].copy()
    bad["vector"] = [np.full(16, np.nan)]
    bad["sample_id"] = "nan-sample"
    out = tmp_path / "out.parquet"
    tally = predict_file(trained, _write(pd.concat([one, bad]), tmp_path / "in.parquet"), out)
    df = pq.read_table(out).to_pandas()
    assert set(df["modalities"].map(tuple)) == {("audio",), ("audio", "video")}
    assert (df.loc[df["modalities"].map(len) == 1, "dominant_modality"] == "audio").all()
    assert "nan-sample" not in set(df["sample_id"]) and tally.rejected["NaN or inf in vector"] == 1
    assert set(tally.summary()["accuracy_by_modalities"]) == {"audio", "audio+video"}


def _with_blank_ids(features: pd.DataFrame, where: dict[int, str | None]) -> pd.DataFrame:
    """`features` with rows inserted so that row i of the result has sample_id where[i] (None or "")."""
    rows = features.reset_index(drop=True)
    for i, blank in sorted(where.items()):
        row = rows.iloc[[i % len(features)]].assign(sample_id=[blank])
        rows = pd.concat([rows.iloc[:i], row, rows.iloc[i:]], ignore_index=True)
    return rows


def test_rows_without_a_sample_id_are_set_aside_and_counted_wherever_they_are(run, tmp_path):
    """Null or "" ids: first row, the last row of a 7-row batch, mid-batch, the file's last row."""
    trained, features, expected = _reference(run, tmp_path)
    blanks = _with_blank_ids(features, {0: None, 6: None, 20: "", len(features) + 3: None})
    assert blanks["sample_id"].isna().tolist()[6] and blanks["sample_id"].iloc[-1] is None
    out = tmp_path / "out.parquet"
    tally = predict_file(trained, _write(blanks, tmp_path / "blanks.parquet"), out, batch_rows=7)
    got = pq.read_table(out).to_pandas().set_index("sample_id").sort_index()
    assert dict(tally.rejected) == {"empty sample_id": 4} and tally.samples == len(expected)
    pd.testing.assert_series_equal(got["predicted_class"], expected["predicted_class"])
    # every row without an id: all set aside, none predicted
    nothing = _write(features.iloc[:10].assign(sample_id=[None, ""] * 5), tmp_path / "nothing.parquet")
    tally = predict_file(trained, nothing, tmp_path / "nothing-out.parquet", batch_rows=3)
    assert tally.rejected["empty sample_id"] == 10 and tally.samples == 0
    assert pq.read_metadata(tmp_path / "nothing-out.parquet").num_rows == 0


def test_rows_without_a_sample_id_reach_the_summary_and_the_log(run, tmp_path):
    from tasks.serving.outputs import summary_lines

    blanks = _with_blank_ids(_features(run), {0: None, 9: "", 30: None})
    out = tmp_path / "pred.parquet"
    assert _predict_cli(run, _write(blanks, tmp_path / "blanks.parquet"), out) == 0
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["rejected_rows"]["empty sample_id"]["rows"] == 3
    assert summary["samples"] == _features(run)["sample_id"].nunique() == pq.read_metadata(out).num_rows
    assert any(line.startswith("3 row(s) set aside: empty sample_id") for line in summary_lines(summary))


def test_a_large_row_group_is_read_in_slices(tmp_path):
    """One 200,000-row group (53 MB of vectors) read 10,000 rows at a time: what Arrow holds
    at once stays far below the group (measured: 14 MB, the read buffers and the sample_id
    dictionary; reading the group whole: 102 MB)."""
    rows, dim = 200_000, 64
    table = pa.table({"sample_id": pa.array(np.char.add("s", np.arange(rows).astype(str))),
                      "modality": pa.array(np.full(rows, "audio")),
                      "vector": catalog.vector_column(np.random.default_rng(0).standard_normal((rows, dim)))})
    path = tmp_path / "one-group.parquet"
    pq.write_table(table, path, row_group_size=rows)
    whole = table.nbytes
    del table
    file = open_parquet(path)
    assert file.num_row_groups == 1
    before, most, sizes = pa.total_allocated_bytes(), 0, []
    for batch in record_batches(file, 10_000, ["sample_id", "modality", "vector"]):
        most = max(most, pa.total_allocated_bytes() - before)
        sizes.append(len(batch))
    assert sum(sizes) == rows and max(sizes) == 10_000
    assert most < whole / 2, (most, whole)


def test_a_class_added_by_name_is_described_embedded_cached_and_unseen(run, tmp_path):
    classes = tmp_path / "classes.csv"
    pd.DataFrame({"class_name": [*CLASSES, "thunder rumbling"]}).to_csv(classes, index=False)
    out = tmp_path / "open.parquet"
    assert _predict_cli(run, run / "in" / "features.parquet", out, "--classes", str(classes), "--top-k", "7") == 0
    df = pq.read_table(out).to_pandas()
    assert df["top_k"].map(lambda t: {c["class_name"] for c in t}).map(lambda s: "thunder rumbling" in s).all()
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["classes"] == 7 and summary["added_classes"] == ["thunder rumbling"]
    cached = list((run / "ws" / "predict_classes").glob("*.parquet"))
    assert len(cached) == 1 and pq.read_table(cached[0])["class_name"].to_pylist() == ["thunder rumbling"]
    from tasks.serving.open_vocab import model_over_classes

    wider = model_over_classes(load_model(run / "out" / "model"), classes, run / "ws")
    assert wider.model.seen.shape == (2, 7) and not wider.model.seen[:, 6].any()
    assert torch.equal(wider.model.class_emb[:6], load_model(run / "out" / "model").model.class_emb)


def _assert_one_line_error(capsys, code: int, out: Path, *names: str) -> None:
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("cscf: error: "), err[-2000:]
    for name in names:
        assert name in last, last
    assert "Traceback" not in err, err[-2000:]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_unknown_modality_and_wrong_length_are_one_line_errors(run, tmp_path, capsys):
    features = _features(run)
    unknown = features.copy()
    unknown.loc[unknown.index[5], "modality"] = "depth"
    out = tmp_path / "out" / "a.parquet"
    code = _predict_cli(run, _write(unknown, tmp_path / "unknown.parquet"), out)
    _assert_one_line_error(capsys, code, out, "unknown.parquet", "'depth'")
    vectors = features["vector"].tolist()
    vectors[3] = np.zeros(5)
    short = features.assign(vector=vectors)
    code = _predict_cli(run, _write(short, tmp_path / "short.parquet"), out)
    _assert_one_line_error(capsys, code, out, "short.parquet", repr(short["modality"].iloc[3]), "length")


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / META).read_text())
    edit(meta)
    (folder / META).write_text(json.dumps(meta))


def _reseal(folder: Path) -> None:
    """Record both files' checksums again: a folder edited consistently, as a forger would."""
    weights = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    _edit_meta(folder, lambda meta: meta.update(checksums=checksums(meta, weights)))


def _one_d_seen_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    save_file({**state, "seen": state["seen"][0].contiguous()}, str(folder / WEIGHTS))
    _reseal(folder)


def _flip_a_weight_byte(folder: Path) -> None:
    raw = bytearray((folder / WEIGHTS).read_bytes())
    raw[-3] ^= 0xFF  # in the last tensor's data
    (folder / WEIGHTS).write_bytes(bytes(raw))


MODEL_EDITS = {  # what is done to a copy of the model folder -> (file named, words of the one line)
    "missing key": (lambda f: _edit_meta(f, lambda m: m.pop("class_names")), META, ["'class_names'", "missing"]),
    "wrong type": (lambda f: _edit_meta(f, lambda m: m["modalities"][0].update(dim="16")), META,
                   ["'modalities[0].dim'", "expected a number"]),
    "wrong config type": (lambda f: _edit_meta(f, lambda m: m["model_config"].update(top_k="3")), META,
                          ["'model_config.top_k'"]),
    "edited class order": (lambda f: _edit_meta(f, lambda m: m["class_names"].reverse()), META,
                           ["does not match its checksum (edited?)", "'class_names'"]),
    "edited weights": (_flip_a_weight_byte, WEIGHTS, ["corrupted", "checksum"]),
    "1-D seen in model.json": (lambda f: _edit_meta(f, lambda m: m.update(seen=m["class_names"])), META,
                               ["'seen'", "expected an object, got a list"]),
    "1-D seen in the weights": (_one_d_seen_weights, WEIGHTS, ["'seen'", "shape [6]", "[2, 6]"]),
    "huge dim": (lambda f: _edit_meta(f, lambda m: m["modalities"][0].update(dim=10**12)), META,
                 ["'modalities[0].dim'", "1..65536", "1000000000000"]),
    "huge hidden width": (lambda f: _edit_meta(f, lambda m: m["model_config"]["mappers"][1].update(hidden=[2**40])),
                          META, ["'model_config.mappers[1].hidden[0]'"]),
    "dim the weights do not have": (lambda f: (_edit_meta(f, lambda m: m["modalities"][0].update(dim=4096)),
                                               _reseal(f)), WEIGHTS, ["'in_mean_0'", "[16]", "[4096]"]),
    "unknown format version": (lambda f: _edit_meta(f, lambda m: m.update(format_version=99)), META,
                               ["version 99", f"reads versions 1 and {FORMAT_VERSION}"]),
    "format 1 without its weights digest": (lambda f: (_as_format_1(f), _edit_meta(f, lambda m: m.pop("weights_sha256"))),
                                            META, ["'weights_sha256'", "format 1"]),
    "format 1 with edited weights": (lambda f: (_as_format_1(f), _flip_a_weight_byte(f)), WEIGHTS, ["corrupted"]),
}


def _as_format_1(folder: Path) -> None:
    """The folder as cscf wrote it before format 2: the same fields, and only the weights'
    digest, under `weights_sha256`."""
    def downgrade(meta: dict) -> None:
        meta.update(format_version=1, weights_sha256=meta.pop("checksums")[WEIGHTS])

    _edit_meta(folder, downgrade)


def test_a_format_1_model_folder_still_predicts(run, tmp_path, caplog):
    """The model folder is a contract: a folder written before model.json had checksums loads
    (with a warning that its fields are unprotected) and predicts what it predicted."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(run / "out" / "model", folder)
    _as_format_1(folder)
    assert "checksums" not in json.loads((folder / META).read_text())
    with caplog.at_level("WARNING", logger="cscf.model_file"):
        old = load_model(folder)
    assert "model format 1" in caplog.text
    new, rows = load_model(run / "out" / "model"), run / "in" / "features.parquet"
    predict_file(old, rows, tmp_path / "old.parquet")
    predict_file(new, rows, tmp_path / "new.parquet")
    assert pq.read_table(tmp_path / "old.parquet").equals(pq.read_table(tmp_path / "new.parquet"))


@pytest.mark.parametrize("case", list(MODEL_EDITS))
def test_model_json_is_checked_as_a_whole_and_covered_by_the_checksum(run, tmp_path, capsys, case):
    import shutil

    from flows.cli import main

    edit, named, words = MODEL_EDITS[case]
    folder = tmp_path / "model"
    shutil.copytree(run / "out" / "model", folder)
    load_model(folder)  # the copy loads before the edit
    edit(folder)
    out = tmp_path / "o.parquet"
    code = main(["predict", "--model", str(folder), "--features", str(run / "in" / "features.parquet"),
                 "--out", str(out), "--workspace", str(run / "ws")])
    _assert_one_line_error(capsys, code, out, f"cscf: error: {folder / named}: ", *words)


@pytest.mark.parametrize("unreadable", [META, WEIGHTS])
def test_an_unreadable_model_file_is_one_line_naming_it(run, tmp_path, capsys, monkeypatch, unreadable):
    from flows.cli import main

    locked, opened = run / "out" / "model" / unreadable, Path.open

    def refuse(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    out = tmp_path / "o.parquet"
    code = _predict_cli(run, run / "in" / "features.parquet", out)
    _assert_one_line_error(capsys, code, out, f"cscf: error: {locked}: cannot read the model file (Permission denied)")


def test_an_unknown_modality_is_found_before_the_flow_starts_and_said_once(run, tmp_path, capsys, monkeypatch):
    import flows.predict

    def no_flow(params):
        raise AssertionError("the flow started before the input was checked")

    monkeypatch.setattr(flows.predict, "cscf_predict", no_flow)
    features = _features(run)
    features.loc[features.index[-1], "modality"] = "depth"  # the file's last row: past any sample of rows
    source = _write(features, tmp_path / "deep.parquet")
    out = tmp_path / "out" / "d.parquet"
    code = _predict_cli(run, source, out)
    err = capsys.readouterr().err
    assert code == 1 and [line for line in err.splitlines() if "cscf: error:" in line] == [
        f"cscf: error: {source}: modality 'depth' (row {len(features) - 1}, sample_id "
        f"{features['sample_id'].iloc[-1]!r}) is not one of the model's modalities ['audio', 'video']"]
    assert err.count("depth") == 1 and "Traceback" not in err


def test_input_check_reads_the_schema_widths_and_columns(run, tmp_path):
    trained = load_model(run / "out" / "model")
    audio = _features(run).query("modality == 'audio'")
    fixed = pa.table({"sample_id": audio["sample_id"], "modality": audio["modality"],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(audio["vector"].tolist()),
                                                                           pa.float32()), 16)})
    pq.write_table(fixed, tmp_path / "fixed.parquet")
    check_predict_input(trained, tmp_path / "fixed.parquet")  # 16 values per row: audio's length
    pq.write_table(fixed.set_column(1, "modality", pa.array(["video"] * len(audio))), tmp_path / "wide.parquet")
    with pytest.raises(InputError, match=r"wide.parquet: modality 'video' needs vectors of length 12, the file's "
                                         r"'vector' column holds 16 values per row"):
        check_predict_input(trained, tmp_path / "wide.parquet")
    pq.write_table(fixed.drop_columns(["modality"]), tmp_path / "no-modality.parquet")
    with pytest.raises(InputError, match=r"no-modality.parquet: missing required column\(s\) \['modality'\]"):
        check_predict_input(trained, tmp_path / "no-modality.parquet")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"bad.parquet: not readable as Parquet"):
        check_predict_input(trained, tmp_path / "folder")


def test_missing_corrupted_or_incompatible_model_files_are_one_line_errors(run, tmp_path, capsys):
    import shutil

    from flows.cli import main

    out = tmp_path / "b.parquet"
    broken = tmp_path / "model"
    shutil.copytree(run / "out" / "model", broken)
    argv = ["predict", "--model", str(broken), "--features", str(run / "in" / "features.parquet"), "--out", str(out),
            "--workspace", str(run / "ws")]
    raw = bytearray((broken / WEIGHTS).read_bytes())
    raw[-3] ^= 0xFF
    (broken / WEIGHTS).write_bytes(bytes(raw))
    _assert_one_line_error(capsys, main(argv), out, str(broken / WEIGHTS), "corrupted")
    (broken / WEIGHTS).unlink()
    _assert_one_line_error(capsys, main(argv), out, str(broken / WEIGHTS), "not found")
    shutil.copy(run / "out" / "model" / WEIGHTS, broken / WEIGHTS)
    meta = json.loads((broken / META).read_text())
    (broken / META).write_text(json.dumps({**meta, "format_version": 99}))
    _assert_one_line_error(capsys, main(argv), out, str(broken / META), "version 99")
    (broken / META).write_text("{not json")
    _assert_one_line_error(capsys, main(argv), out, str(broken / META), "corrupted")


def test_manifest_for_a_features_trained_model_is_refused(run, tmp_path, capsys):
    from flows.cli import main

    manifest = tmp_path / "clips.csv"
    manifest.write_text("sample_id,class_name,path\nx,dog barking,x.mp4\n")
    out = tmp_path / "c.parquet"
    code = main(["predict", "--model", str(run / "out" / "model"), "--manifest", str(manifest), "--out", str(out),
                 "--workspace", str(run / "ws")])
    _assert_one_line_error(capsys, code, out, "did not come from media", "--manifest")


def test_offline_description_template_is_a_file(tmp_path):
    from tasks.semantics.descriptions import DescriptionSettings, generate_descriptions

    template = tmp_path / "quote.txt"
    template.write_text("A quotation about {class_name}.\n")
    settings = DescriptionSettings(mode="offline", offline_template=template)
    table = generate_descriptions(pd.DataFrame({"class_name": ["LateNight"]}), settings, tmp_path / "cache")
    assert table["description"].to_pylist() == ["A quotation about Late Night."]
    assert settings.model_record()["offline_template"] == ["A quotation about {class_name}."]
    assert settings.cache_fields() != DescriptionSettings(mode="offline").cache_fields()
    template.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match=r"quote.txt: every line needs a \{class_name\} placeholder"):
        DescriptionSettings(mode="offline", offline_template=template).cache_fields()


def test_prediction_benchmark_predicts_what_the_model_computes(tmp_path):
    """The benchmark's streamed output against the model's forward on tensors built here, row
    by row, from the input file: every sample once, its modalities, class and probability."""
    from benchmarks import predict as bench

    bench._throughput(tmp_path, 300)
    rows = pq.read_table(tmp_path / "input.parquet").to_pandas()
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    trained = load_model(tmp_path / "model")
    ids = sorted(set(rows["sample_id"]))
    position = {s: i for i, s in enumerate(ids)}
    features = [torch.zeros(len(ids), d) for d in bench.DIMS]
    present = torch.zeros(len(ids), 2, dtype=torch.bool)
    for sample_id, modality, vector in rows[["sample_id", "modality", "vector"]].itertuples(index=False):
        m = trained.modalities.index(modality)
        features[m][position[sample_id]] = torch.tensor(vector)
        present[position[sample_id], m] = True
    with torch.no_grad():
        probability, best = trained.model(features, present).fused.softmax(-1).max(-1)
    got = out.set_index("sample_id").loc[ids]
    assert len(out) == len(ids) == 300 and present[:, 1].sum() == 200
    assert got["modalities"].map(list).tolist() == [["a", "b"] if p[1] else ["a"] for p in present.tolist()]
    assert got["predicted_class"].tolist() == [trained.class_names[i] for i in best.tolist()]
    np.testing.assert_allclose(got["probability"], probability.double().numpy(), rtol=1e-5)


def test_classes_unseen_by_every_modality_get_the_dominant_margin_on_bimodal_samples():
    """CSCF.unseen_by_all_offset on a hand-made case: class 2 seen by no modality (DMSS routing)."""
    from cscf_model import create_model

    torch.manual_seed(0)
    seen = torch.tensor([[True, False, False], [False, True, False]])
    from benchmarks.predict import DMSS

    model = create_model("CSCF", [4, 3], torch.randn(3, 8), seen, **DMSS).eval()
    model.margin.copy_(torch.tensor([2.0, 5.0]))
    feats, both = [torch.randn(6, 4), torch.randn(6, 3)], torch.ones(6, 2, dtype=torch.bool)
    with torch.no_grad():
        out = model(feats, both)
        offset = model.unseen_by_all_offset(both.T, out.dominant)
        margin = model.margin[out.dominant]
        assert torch.equal(offset, torch.stack([margin, margin, torch.zeros(6)], dim=1))
        alone = torch.tensor([[True, False]] * 6)
        assert torch.equal(model.unseen_by_all_offset(alone.T, out.dominant), torch.zeros(6, 3))
        # every class seen by some modality: nothing to calibrate against, no offset at all
        model.seen[1, 2] = True
        assert torch.equal(model.unseen_by_all_offset(both.T, model(feats, both).dominant), torch.zeros(6, 3))
