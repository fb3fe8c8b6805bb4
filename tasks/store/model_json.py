"""What `model.json` of a model folder must hold (tasks/store/model_file.py), checked as a whole.

A model folder is input: shared, copied, edited by hand. Everything prediction reads from
model.json is checked here before anything is built from it, so that a missing key or a
wrong type is one line naming the file and the field instead of a KeyError or an
IndexError far away, and a typo'd width cannot allocate gigabytes before any shape is
compared (each width is bounded by MAX_WIDTH; the weights' shapes are compared with
these settings, before allocation, by model_file).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, NoReturn

from cscf_model.config import MapperConfig, ModelConfig, config_from_dict

# A feature, class-vector or hidden width above this is a typo or a forged file: the
# encoders in use give at most 1,024 (CLAP, CLIP ViT-L), LLM text embeddings 4,096.
MAX_WIDTH = 65_536

# model.json's fields and their JSON kinds; no other field is accepted.
FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,), "code_version": (dict,), "modalities": (list,), "class_names": (list,),
    "seen": (dict,), "class_embeddings": (dict,), "descriptions": (dict,), "calibration": (dict,),
    "text_aligned": (dict,), "model_config": (dict,), "train_config": (dict, type(None)),
    "extraction": (dict, type(None)), "checksums": (dict,),
}
# Fields a model.json may lack: `validation` is written only for a model whose settings were
# chosen on `cscf run --validation` data, so a folder without it (every one before) stays valid.
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {"validation": (dict,)}

Fail = Callable[[str, str], NoReturn]


class ModelFileError(ValueError):
    """A model folder that cannot be used; the message names the file."""


def check_meta(meta: Any, path: Path, weights: str) -> ModelConfig:
    """model.json as a whole: every field present with its kind and no other, names non-empty
    and unique, the seen sets, calibration margins and text alignment over exactly the
    model's modalities, every width in 1..MAX_WIDTH, the model config's fields of their
    kinds, and an optional `validation` record of its shape that agrees with the model config
    and the margins. Returns the model config; ModelFileError (one line: file and field) otherwise.

    weights: the weights file's name, the key of its checksum in `checksums`."""

    def fail(field: str, problem: str) -> NoReturn:
        raise ModelFileError(f"{path}: field {field!r}: {problem}")

    if not isinstance(meta, dict):
        fail("(top level)", f"expected an object, got {_kind(meta)}")
    for name, kinds in (FIELDS | {k: v for k, v in OPTIONAL_FIELDS.items() if k in meta}).items():
        if name not in meta:
            fail(name, "missing")
        if _kind(meta[name]) not in {_KIND_OF_TYPE[k] for k in kinds}:
            fail(name, f"expected {' or '.join(_KIND_OF_TYPE[k] for k in kinds)}, got {_kind(meta[name])}")
    for name in sorted(meta.keys() - FIELDS.keys() - OPTIONAL_FIELDS.keys()):
        fail(name, "not a field of this format version")
    modalities = _modalities(meta["modalities"], fail)
    classes = set(_names(meta["class_names"], "class_names", fail))
    if not classes:
        fail("class_names", "empty list")
    for name, seen in _per_modality(meta["seen"], "seen", modalities, fail).items():
        unknown = set(_names(seen, f"seen.{name}", fail)) - classes
        if unknown:
            fail(f"seen.{name}", f"class(es) not in class_names: {sorted(unknown)[:5]}")
    _margins(meta["calibration"], "calibration", modalities, fail)
    for name, aligned in _per_modality(meta["text_aligned"], "text_aligned", modalities, fail).items():
        if not isinstance(aligned, bool):
            fail(f"text_aligned.{name}", f"expected true or false, got {aligned!r}")
    _check_fields(meta["class_embeddings"], {"encoder": "a string", "dim": "a number"}, "class_embeddings", fail)
    _width(meta["class_embeddings"]["dim"], "class_embeddings.dim", fail)
    _check_descriptions(meta["descriptions"], fail)
    checksums = meta["checksums"]
    if set(checksums) != {weights, path.name} or not isinstance(checksums[weights], str) \
            or not isinstance(checksums[path.name], dict):
        fail("checksums", f"expected {{{weights!r}: digest, {path.name!r}: {{field: digest}}}}")
    config = _model_config(meta["model_config"], fail)
    if "validation" in meta:
        _check_validation(meta["validation"], meta["calibration"], config, modalities, fail)
    return config


def _margins(margins: dict[str, Any], field: str, modalities: list[str], fail: Fail) -> None:
    """One finite calibration margin per modality."""
    for name, margin in _per_modality(margins, field, modalities, fail).items():
        if _kind(margin) != "a number" or not math.isfinite(margin):
            fail(f"{field}.{name}", f"expected a finite number, got {margin!r}")


def _check_validation(
    record: dict[str, Any], calibration: dict[str, float], config: ModelConfig, modalities: list[str], fail: Fail
) -> None:
    """The settings chosen on validation data (tasks.training.validation.validation_record):
    its fields of their kinds, and the choices those the model uses (its config's fusion,
    top_k and gate_mix, its margins), so the record cannot describe another model."""
    _check_fields(record, {"file_sha256": "a string", "samples": "a number", "rejected_rows": "an object",
                           "chosen": "an object", "candidates": "an object"}, "validation", fail)
    chosen = record["chosen"]
    _check_fields(chosen, {"fusion": "a string", "top_k": "a number", "margins": "an object"}, "validation.chosen",
                  fail)
    if (chosen["fusion"], chosen["top_k"]) != (config.fusion, config.top_k):
        fail("validation.chosen", f"fusion {chosen['fusion']!r} and top_k {chosen['top_k']!r} differ from "
             f"model_config's {config.fusion!r} and {config.top_k!r}")
    if chosen.get("gate_mix", config.gate_mix) != config.gate_mix:  # absent in records from before it was chosen
        fail("validation.chosen", f"gate_mix {chosen['gate_mix']!r} differs from model_config's {config.gate_mix!r}")
    _margins(chosen["margins"], "validation.chosen.margins", modalities, fail)
    if chosen["margins"] != calibration:
        fail("validation.chosen.margins", "differ from the field 'calibration'")
    if chosen.get("gate_scaling") is not None:  # absent before gates were scaled on validation data; null: kept
        if _kind(chosen["gate_scaling"]) != "an object":
            fail("validation.chosen.gate_scaling", f"expected an object or null, got {_kind(chosen['gate_scaling'])}")
        scaling = _per_modality(chosen["gate_scaling"], "validation.chosen.gate_scaling", modalities, fail)
        for name, fit in scaling.items():
            _check_fields(fit, {"slope": "a number", "shift": "a number"}, f"validation.chosen.gate_scaling.{name}",
                          fail)
    candidates = record["candidates"]
    _check_fields(candidates, {"multimodal_samples": "a number", "fusion": "a list", "margins": "an object"},
                  "validation.candidates", fail)
    for i, candidate in enumerate(candidates["fusion"]):
        _check_fields(candidate, {"fusion": "a string"}, f"validation.candidates.fusion[{i}]", fail)
    for name, margin in _per_modality(candidates["margins"], "validation.candidates.margins", modalities, fail).items():
        _check_fields(margin, {"trained": "a number", "chosen": "a number"}, f"validation.candidates.margins.{name}",
                      fail)


def _modalities(modalities: list[Any], fail: Fail) -> list[str]:
    """[{"name", "dim"}, ...] with unique names and bounded widths -> the names, in model order."""
    if not modalities:
        fail("modalities", "empty list")
    for i, m in enumerate(modalities):
        _check_fields(m, {"name": "a string", "dim": "a number"}, f"modalities[{i}]", fail)
        _width(m["dim"], f"modalities[{i}].dim", fail)
    return _names([m["name"] for m in modalities], "modalities[].name", fail)


def _check_descriptions(record: dict[str, Any], fail: Fail) -> None:
    """The description settings that describe classes added at prediction time, as in training."""
    kinds = {"mode": "a string", "n_descriptions": "a number", "offline_template": "a list"}
    if record.get("mode") == "llm":
        kinds |= {"llm_template": "a string", "model": "a string", "temperature": "a number"}
    _check_fields(record, kinds, "descriptions", fail)
    if record["mode"] not in ("offline", "llm"):
        fail("descriptions.mode", f"expected 'offline' or 'llm', got {record['mode']!r}")
    if not all(isinstance(line, str) for line in record["offline_template"]):
        fail("descriptions.offline_template", "expected a list of strings")


def _model_config(d: dict[str, Any], fail: Fail) -> ModelConfig:
    """The model config, each field of its kind (a bound on every hidden width) before
    ModelConfig's own checks."""
    _check_config_kinds(d, ModelConfig, "model_config", fail)
    mappers = d.get("mappers", [])
    if not isinstance(mappers, list):
        fail("model_config.mappers", f"expected a list, got {_kind(mappers)}")
    for i, mapper in enumerate(mappers):
        field = f"model_config.mappers[{i}]"
        if not isinstance(mapper, dict):
            fail(field, f"expected an object, got {_kind(mapper)}")
        _check_config_kinds(mapper, MapperConfig, field, fail)
        for j, width in enumerate(mapper.get("hidden", [])):
            _width(width, f"{field}.hidden[{j}]", fail)
    try:
        return config_from_dict(d)
    except (ValueError, TypeError) as e:
        fail("model_config", str(e).splitlines()[0])


def _check_config_kinds(d: dict[str, Any], cls: type, field: str, fail: Fail) -> None:
    """Each field of a config dataclass present in `d` has its default's JSON kind (or null
    where the field may be None); unknown fields are left to config_from_dict, which names them."""
    for f in dataclasses.fields(cls):
        if f.name in d and f.name != "mappers":
            allowed = {_kind(f.default)} | ({"null"} if "None" in str(f.type) else set())
            if _kind(d[f.name]) not in allowed:
                fail(f"{field}.{f.name}", f"expected {' or '.join(sorted(allowed))}, got {d[f.name]!r}")


def _check_fields(d: Any, kinds: dict[str, str], field: str, fail: Fail) -> None:
    """An object holding at least `kinds`' keys, each of its kind."""
    if not isinstance(d, dict):
        fail(field, f"expected an object, got {_kind(d)}")
    for key, kind in kinds.items():
        if key not in d:
            fail(f"{field}.{key}", "missing")
        if _kind(d[key]) != kind:
            fail(f"{field}.{key}", f"expected {kind}, got {d[key]!r}")


def _per_modality(value: dict[str, Any], field: str, modalities: list[str], fail: Fail) -> dict[str, Any]:
    """An object with exactly one entry per modality of the model."""
    if set(value) != set(modalities):
        fail(field, f"expected one entry per modality {modalities}, got {sorted(value)}")
    return value


def _names(values: Any, field: str, fail: Fail) -> list[str]:
    """A list of unique, non-empty strings."""
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        fail(field, "expected a list of non-empty strings")
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        fail(field, f"repeated name(s) {repeated[:5]}")
    return values


def _width(value: Any, field: str, fail: Fail) -> None:
    if _kind(value) != "a number" or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        fail(field, f"expected an integer in 1..{MAX_WIDTH}, got {value!r}")


_KIND_OF_TYPE = {int: "a number", dict: "an object", list: "a list", type(None): "null"}


def _kind(value: Any) -> str:
    """The JSON kind of a value, as the messages name it (a bool is not a number)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__
