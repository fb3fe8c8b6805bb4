"""The trained model as a folder a user keeps and shares: `model.safetensors` + `model.json`.

`save_model` / `load_model` are the only code that writes or reads it (CONTRACTS
section 5). Loading never unpickles (safetensors holds tensors only, the rest is JSON),
needs neither workspace nor training data, and refuses, with one line naming the file
(and the field of model.json), a folder written by another format version, a missing or
unreadable file, a model.json that does not hold together (tasks/store/model_json.py),
either file edited or corrupted since it was written (model.json records the checksum of
the weights and of each of its own fields), or weights whose shapes differ from what
model.json's settings build (compared on the safetensors header, before allocation).

model.json records what prediction needs besides the weights: the modalities in model
order with their feature lengths, the class names, each modality's seen classes by name
(any number of modalities), the class-embedding encoder and the description settings
(so classes added at prediction time are described and embedded as in training), the
calibration margins, the resolved model and training configs, the code version, the
extraction settings when the features came from media, and, for a model whose settings were
chosen on `--validation` data, `validation`: what was chosen from which candidates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cscf_model import CSCF
from cscf_model.config import ModelConfig
from cscf_model.mappers import build_mapper

from tasks.store import catalog
from tasks.store.caching import code_digest
from tasks.store.model_json import ModelFileError, check_meta

log = logging.getLogger("cscf.model_file")

# 2: model.json checked as a whole and covered by `checksums` (1 had the weights' checksum only).
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class TrainedModel:
    """A loaded model folder: the module, in eval mode, and what model.json says about it."""

    model: CSCF
    meta: dict[str, Any]

    @property
    def modalities(self) -> list[str]:
        return [m["name"] for m in self.meta["modalities"]]

    @property
    def input_dims(self) -> dict[str, int]:
        return {m["name"]: m["dim"] for m in self.meta["modalities"]}

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])


def code_version() -> dict[str, str]:
    """The package version and a hash of the model code: which code wrote a model folder."""
    try:
        package = version("cscf")
    except PackageNotFoundError:
        package = "unknown"
    return {"package": package, "cscf_model_sha256": code_digest(("cscf_model",))}


def save_model(
    directory: Path,
    checkpoint: dict[str, Any],
    encoder: str,
    descriptions: dict[str, Any],
    extraction: dict[str, Any] | None = None,
) -> Path:
    """Write `directory/model.safetensors` and `directory/model.json` from a training checkpoint.

    checkpoint: the train stage's dict ("model" state_dict, "config", "train_config",
    "input_dims", "modalities", "class_names", and "validation" when the validate stage
    chose its settings). descriptions: the settings that wrote the class descriptions
    (tasks.semantics.descriptions.DescriptionSettings.model_record()).
    """
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in checkpoint["model"].items()}
    modalities, classes = list(checkpoint["modalities"]), list(checkpoint["class_names"])
    seen, margin, aligned = state["seen"], state["margin"], state["aligned"]
    meta = {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(),
        "modalities": [{"name": m, "dim": int(d)} for m, d in zip(modalities, checkpoint["input_dims"])],
        "class_names": classes,
        "seen": {m: [c for c, s in zip(classes, seen[i].tolist()) if s] for i, m in enumerate(modalities)},
        "class_embeddings": {"encoder": encoder, "dim": int(state["class_emb"].shape[1])},
        "descriptions": descriptions,
        "calibration": {m: float(margin[i]) for i, m in enumerate(modalities)},
        "text_aligned": {m: bool(aligned[i]) for i, m in enumerate(modalities)},
        "model_config": checkpoint["config"],
        "train_config": checkpoint.get("train_config"),
        "extraction": extraction,
        **({"validation": checkpoint["validation"]} if "validation" in checkpoint else {}),
    }
    meta = json.loads(json.dumps(meta))  # as load_model will read it back: tuples become lists
    with catalog.atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        meta["checksums"] = checksums(meta, _sha256(tmp))
    catalog.write_json(meta, directory / META)
    return directory


def export_model(
    checkpoint: Path, directory: Path, encoder: str, descriptions: dict[str, Any], extraction: dict[str, Any] | None,
) -> Path:
    """`cscf run --out DIR` -> `DIR/model/`: a CSCF checkpoint of the train (or validate) stage as a model folder."""
    return save_model(directory, torch.load(checkpoint, weights_only=True), encoder, descriptions, extraction)


def load_model(directory: Path) -> TrainedModel:
    """Rebuild the trained CSCF from a model folder, in eval mode; ModelFileError if unusable.

    In this order, so that nothing large is allocated for a file that does not hold together:
    model.json as a whole (check_meta), both files against the checksums model.json records,
    then the weights' shapes (read from the safetensors header) against what model.json's
    settings build, and only then the model.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found (a model folder holds {META} and {WEIGHTS})")
    meta = _read_meta(meta_path)
    config = check_meta(meta, meta_path, WEIGHTS)
    _check_checksums(meta, meta_path, weights_path)
    _check_weight_shapes(meta, config, meta_path, weights_path)
    try:
        state = load_file(str(weights_path))
        dims = [m["dim"] for m in meta["modalities"]]
        model = CSCF(config, dims, state["class_emb"], state["seen"], state["aligned"])
        model.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{directory}: model files do not fit together ({str(e).splitlines()[0]})") from None
    trained = TrainedModel(model.eval(), meta)
    rows = zip(trained.modalities, model.seen.tolist())
    seen = {m: {c for c, s in zip(trained.class_names, row) if s} for m, row in rows}
    if seen != {m: set(names) for m, names in meta["seen"].items()}:
        raise ModelFileError(f"{meta_path}: field 'seen' does not match the seen matrix of {WEIGHTS}")
    return trained


def checksums(meta: dict[str, Any], weights_sha256: str) -> dict[str, Any]:
    """What model.json records under `checksums`: the SHA-256 of the weights file and of each
    other field of model.json (its canonical JSON), so that an edit of either file since it
    was written is refused, naming the edited field (a changed class order would otherwise
    load silently and name every prediction wrongly)."""
    fields = {k: v for k, v in meta.items() if k != "checksums"}
    return {WEIGHTS: weights_sha256, META: {k: _digest(v) for k, v in sorted(fields.items())}}


def _read_meta(path: Path) -> dict[str, Any]:
    """model.json parsed, of this format version; ModelFileError naming the file otherwise."""
    try:
        meta = json.loads(path.read_bytes())
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.strerror or e})") from None
    except ValueError as e:  # UnicodeDecodeError included
        raise ModelFileError(f"{path}: corrupted model file, not JSON ({e})") from None
    found = meta.get("format_version") if isinstance(meta, dict) else None
    if found == 1:
        return _from_format_1(meta, path)
    if found != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {found!r}, this cscf reads versions 1 and "
                             f"{FORMAT_VERSION} (export the model again with this cscf: `cscf run --out DIR`)")
    return meta


def _from_format_1(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """A format-1 model.json (written before its fields had checksums; the model folder is a
    contract, so old folders keep working) read as this format: same fields, and the one
    digest format 1 kept, the weights'. Its fields are taken as they are now, so an edit
    made to them cannot be told; exporting again protects them."""
    fields = {k: v for k, v in meta.items() if k != "weights_sha256"}
    if not isinstance(meta.get("weights_sha256"), str):
        raise ModelFileError(f"{path}: field 'weights_sha256': missing or not a string (model format 1)")
    log.warning("%s: model format 1: its fields carry no checksum, only the weights do; export the model "
                "again (`cscf run --out DIR`) to protect them", path)
    current = {**fields, "format_version": FORMAT_VERSION}
    return {**current, "checksums": checksums(current, meta["weights_sha256"])}


def _check_checksums(meta: dict[str, Any], meta_path: Path, weights_path: Path) -> None:
    """Both files as they were written: model.json field by field, then the weights' bytes."""
    recorded = meta["checksums"]
    expected = checksums(meta, recorded[WEIGHTS])[META]
    edited = sorted(k for k in expected.keys() | recorded[META].keys() if expected.get(k) != recorded[META].get(k))
    if edited:
        raise ModelFileError(f"{meta_path}: does not match its checksum (edited?); field(s) {edited}")
    try:
        digest = _sha256(weights_path)
    except OSError as e:
        raise ModelFileError(f"{weights_path}: cannot read the model file ({e.strerror or e})") from None
    if digest != recorded[WEIGHTS]:
        raise ModelFileError(f"{weights_path}: corrupted model file (checksum differs from {META})")


def _check_weight_shapes(meta: dict[str, Any], config: ModelConfig, meta_path: Path, weights_path: Path) -> None:
    """The weights' shapes, read from the safetensors header (no tensor loaded), against what
    model.json's settings build: a mismatch is refused before the model is allocated."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            found = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{weights_path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    try:
        expected = _weight_shapes(config, [m["dim"] for m in meta["modalities"]], len(meta["class_names"]),
                                  meta["class_embeddings"]["dim"])
    except ValueError as e:  # a mapper kind or activation build_mapper does not know
        raise ModelFileError(f"{meta_path}: field 'model_config.mappers': {e}") from None
    for name, shape in expected.items():
        if name not in found:
            raise ModelFileError(f"{weights_path}: no tensor {name!r}, which the settings of {META} need")
        if found[name] != shape:
            raise ModelFileError(f"{weights_path}: tensor {name!r} has shape {found[name]}, "
                                 f"the settings of {META} give {shape}")


def _weight_shapes(config: ModelConfig, dims: list[int], n_classes: int, d_s: int) -> dict[str, list[int]]:
    """The shapes of the tensors whose sizes the settings decide, as CSCF.__init__ makes them:
    class buffers, input statistics, gates and every mapper (built on PyTorch's meta device,
    so a large width costs no memory). Others (the learned router's) come from the file."""
    shapes = {"class_emb": [n_classes, d_s], "seen": [len(dims), n_classes], "aligned": [len(dims)],
              "margin": [len(dims)], "gates": [len(dims), len(config.mappers)]}
    with torch.device("meta"):
        for m, d in enumerate(dims):
            shapes |= {f"in_mean_{m}": [d], f"in_std_{m}": [d]}
            for k, mapper in enumerate(config.mappers):
                module = build_mapper(mapper, d, d_s) if config.head == "semantic" else torch.nn.Linear(d, n_classes)
                shapes |= {f"mappers.{m}.{k}.{name}": list(t.shape) for name, t in module.state_dict().items()}
    return shapes


def with_classes(trained: TrainedModel, class_names: list[str], new_embeddings: torch.Tensor) -> TrainedModel:
    """The model over `class_names`: the model's classes keep their vectors, the others
    (open vocabulary) get `new_embeddings` rows, in order, and are unseen by every modality.

    The semantic head scores a class by cosine to its vector, so the mappers need no change;
    only the class-dependent buffers (class_emb, seen) grow.
    """
    old = {c: i for i, c in enumerate(trained.class_names)}
    added = [c for c in class_names if c not in old]
    if len(added) != len(new_embeddings):
        raise ValueError(f"{len(added)} new classes but {len(new_embeddings)} embeddings")
    new_row = {c: i for i, c in enumerate(added)}
    m = trained.model
    class_emb = torch.stack([m.class_emb[old[c]] if c in old else new_embeddings[new_row[c]].float() for c in class_names])
    seen = torch.stack([m.seen[:, old[c]] if c in old else torch.zeros(len(m.seen), dtype=torch.bool)
                        for c in class_names], dim=1)
    state = {**m.state_dict(), "class_emb": class_emb, "seen": seen}
    model = CSCF(m.config, m.input_dims, class_emb, seen, m.aligned)
    model.load_state_dict(state)
    meta = {**trained.meta, "class_names": list(class_names), "added_classes": added}
    return TrainedModel(model.eval(), meta)


def _digest(value: Any) -> str:
    """SHA-256 of a JSON value's canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
