"""The validate stage's pieces without a pipeline: reading a validation file, the model.json
record of the choices, and evaluation's key without validation data."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cscf_model import create_model
from cscf_model.selection import FusionScore, GateScaling, MarginScore, Selection
from tasks.store.model_file import META, WEIGHTS, checksums, load_model, save_model
from tasks.store.model_json import ModelFileError
from tasks.training.validation import ValidationSamples, read_validation, validation_record

MODALITIES, DIMS, CLASSES = ["audio", "video"], [3, 2], ["a", "b"]


def test_bad_rows_are_set_aside_by_the_features_rules_and_the_models(tmp_path: Path, caplog) -> None:
    rows = [("s1", "audio", [1, 2, 3], "a"), ("s1", "video", [1, 2, 3], "a"),  # video: the model reads 2 values
            ("s2", "audio", [0, 0, 1], "b"), ("s2", "text", [1], "b"),  # a modality the model does not know
            ("s3", "audio", [math.nan, 0, 0], "a"), ("s4", "audio", [1, 1, 1], "zebra")]
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist([{"sample_id": s, "modality": m, "vector": v, "class_name": c,
                                          "split": "validation"} for s, m, v, c in rows]), path)  # split: ignored
    with caplog.at_level("WARNING", logger="cscf.validation"):
        samples = read_validation(path, MODALITIES, DIMS, CLASSES)
    assert samples.rejected == {"wrong vector length": 1, "unknown modality": 1, "NaN or inf in vector": 1,
                                "unknown class": 1}
    assert "1 row(s) rejected: unknown modality (e.g. sample_id ['s2'])" in caplog.text
    assert samples.labels.tolist() == [0, 1] and samples.present.tolist() == [[True, False], [True, False]]
    assert samples.features[0].tolist() == [[1, 2, 3], [0, 0, 1]] and samples.features[1].tolist() == [[0, 0]] * 2


def _selection(margins: list[float]) -> Selection:
    gates = GateScaling([0.5, 1.0], [-0.25, 0.0], [3, 2], [1, 0], 50.0, 75.0, True)  # video: no unseen samples
    return Selection(gates, "gate", 3, "product", margins, 4,
                     [FusionScore("gate", None, "product", 75.0), FusionScore("csmf", 1, None, 50.0)],
                     [MarginScore(0.5, m, True, 2, 2, (100.0, 0.0), (100.0, 50.0)) for m in margins])


def _folder(tmp_path: Path, record: dict | None) -> Path:
    """A model folder of an untrained CSCF, with the validation record when given."""
    model = create_model("CSCF", DIMS, torch.eye(2), torch.tensor([[True, False], [False, True]]))
    model.margin.copy_(torch.tensor([1.5, 2.5]))
    checkpoint = {"model": model.state_dict(), "config": model.config.to_dict(), "input_dims": DIMS,
                  "modalities": MODALITIES, "class_names": CLASSES,
                  **({"validation": record} if record is not None else {})}
    descriptions = {"mode": "offline", "n_descriptions": 1, "offline_template": ["{class_name}"]}
    return save_model(tmp_path / "model", checkpoint, "minilm", descriptions)


def _edit(folder: Path, edit) -> None:
    """Change model.json and record its checksums again, as a consistent forger would."""
    meta = json.loads((folder / META).read_text())
    edit(meta)
    meta["checksums"] = checksums(meta, hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest())
    (folder / META).write_text(json.dumps(meta))


def test_model_json_records_the_choices_and_refuses_a_record_of_another_model(tmp_path: Path) -> None:
    samples = ValidationSamples([], torch.zeros(0, 2), torch.zeros(4), {"unknown class": 1})
    record = validation_record(_selection([1.5, 2.5]), MODALITIES, "0" * 64, samples)
    folder = _folder(tmp_path, record)
    meta = load_model(folder).meta
    assert meta["validation"]["chosen"] == {
        "fusion": "gate", "top_k": 3, "gate_mix": "product", "margins": {"audio": 1.5, "video": 2.5},
        "gate_scaling": {"audio": {"slope": 0.5, "shift": -0.25}, "video": {"slope": 1.0, "shift": 0.0}}}
    assert meta["validation"]["candidates"]["gate_scaling"]["per_modality"]["video"]["unseen_samples"] == 0
    assert meta["validation"]["samples"] == 4 and "validation" in meta["checksums"][META]
    _edit(folder, lambda m: m["validation"]["chosen"].update(top_k=2))
    with pytest.raises(ModelFileError, match=r"field 'validation.chosen': fusion 'gate' and top_k 2 differ"):
        load_model(folder)
    _edit(folder, lambda m: m["validation"]["chosen"].update(top_k=3, gate_mix="prior"))
    with pytest.raises(ModelFileError, match=r"'validation.chosen': gate_mix 'prior' differs from model_config's 'product'"):
        load_model(folder)
    _edit(folder, lambda m: m["validation"]["chosen"].pop("gate_mix"))
    assert load_model(folder).meta["validation"]["chosen"]["top_k"] == 3  # a record from before gate_mix was chosen
    _edit(folder, lambda m: m["validation"]["chosen"].update(top_k=3, margins={"audio": 1.5, "video": 0.0}))
    with pytest.raises(ModelFileError, match=r"'validation.chosen.margins': differ from the field 'calibration'"):
        load_model(folder)
    _edit(folder, lambda m: m["validation"]["chosen"].update(margins={"audio": 1.5, "video": 2.5},
                                                             gate_scaling={"audio": {"slope": 1.0, "shift": 0.0}}))
    with pytest.raises(ModelFileError, match=r"'validation.chosen.gate_scaling': expected one entry per modality"):
        load_model(folder)
    _edit(folder, lambda m: m["validation"]["chosen"].update(gate_scaling=None))  # gates kept as trained
    assert load_model(folder).meta["validation"]["chosen"]["gate_scaling"] is None
    _edit(folder, lambda m: m["validation"].pop("candidates"))
    with pytest.raises(ModelFileError, match=r"'validation.candidates': missing"):
        load_model(folder)
    _edit(folder, lambda m: m.update(validation=[]))
    with pytest.raises(ModelFileError, match=r"'validation': expected an object, got a list"):
        load_model(folder)
    # a model without validation data has no such field, as before the option existed
    assert "validation" not in load_model(_folder(tmp_path / "plain", None)).meta


def test_evaluation_without_validation_data_keeps_its_key() -> None:
    from tasks.stages import EVALUATE

    params = {"workspace": "ws", "features_key": "f", "split_key": "s", "embeddings_key": "e",
              "trained": {"CSCF": "t"}, "dataset": "d", "seed": 0}
    assert EVALUATE.key({**params, "validation_key": None}) == EVALUATE.key(params)
    assert EVALUATE.key({**params, "validation_key": "v"}) != EVALUATE.key(params)
