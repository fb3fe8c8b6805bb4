"""The trained model as a folder a user keeps and shares: `model.safetensors` + `model.json`.

`save_model` / `load_model` are the only code that writes or reads it (CONTRACTS
section 5). Loading never unpickles (safetensors holds tensors only, the rest is JSON),
needs neither workspace nor training data, and refuses, with one line naming the file,
a folder written by another format version, a missing file, or weights whose bytes do
not match the checksum recorded beside them.

model.json records what prediction needs besides the weights: the modalities in model
order with their feature lengths, the class names, each modality's seen classes by name
(any number of modalities), the class-embedding encoder and the description settings
(so classes added at prediction time are described and embedded as in training), the
calibration margins, the resolved model and training configs, the code version, and the
extraction settings when the features came from media.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cscf_model import CSCF
from cscf_model.config import config_from_dict

from tasks.store import catalog
from tasks.store.caching import code_digest

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


class ModelFileError(ValueError):
    """A model folder that cannot be used; the message names the file."""


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
    "input_dims", "modalities", "class_names"). descriptions: the settings that wrote the
    class descriptions (tasks.semantics.descriptions.DescriptionSettings.model_record()).
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
    }
    with catalog.atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
        meta["weights_sha256"] = _sha256(tmp)
    catalog.write_json(meta, directory / META)
    return directory


def export_model(
    workspace: Path, train_key: str, directory: Path, encoder: str, descriptions: dict[str, Any],
    extraction: dict[str, Any] | None,
) -> Path:
    """`cscf run --out DIR` -> `DIR/model/`: the train stage's CSCF checkpoint as a model folder."""
    checkpoint = torch.load(catalog.stage_output(workspace, "train", train_key, ".pt"), weights_only=True)
    return save_model(directory, checkpoint, encoder, descriptions, extraction)


def load_model(directory: Path) -> TrainedModel:
    """Rebuild the trained CSCF from a model folder, in eval mode; ModelFileError if unusable."""
    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found (a model folder holds {META} and {WEIGHTS})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{meta_path}: corrupted model file, not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ModelFileError(f"{meta_path}: model format version {found!r}, this cscf reads version {FORMAT_VERSION}")
    if _sha256(weights_path) != meta.get("weights_sha256"):
        raise ModelFileError(f"{weights_path}: corrupted model file (checksum differs from {META})")
    try:
        state = load_file(str(weights_path))
        modalities = [m["name"] for m in meta["modalities"]]
        model = CSCF(config_from_dict(meta["model_config"]), [int(m["dim"]) for m in meta["modalities"]],
                     state["class_emb"], state["seen"], state["aligned"])
        model.load_state_dict(state)
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{directory}: model files do not fit together ({str(e).splitlines()[0]})") from None
    if len(modalities) != model.seen.shape[0] or len(meta["class_names"]) != model.seen.shape[1]:
        raise ModelFileError(f"{meta_path}: modalities or class names do not match the weights' seen matrix")
    return TrainedModel(model.eval(), meta)


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
