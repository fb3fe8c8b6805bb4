"""Validation stage (`cscf run --validation FILE`, CONTRACTS section 2): the data-dependent
choices made on labelled samples instead of defaults.

FILE is the section-1 long form, several modalities per sample. It is read and checked by
the features stage's reader and bad-row rules, plus the model's own: a modality the model
does not know or a vector not of the model's length for it. Each bad row is set aside,
counted in the log with example ids, and recorded; only a file with nothing usable left
stops the run. The trained CSCF encodes the samples once; cscf_model.selection chooses the
scaling of the router's gates, the fusion, its gate mix, CSMF's top-k and each modality's
margin on them; `<key>.pt` is the train stage's
checkpoint with those settings and a `validation` record of what was chosen from which
candidates (validation_record). Evaluation scores that checkpoint, `--out` exports it
(model.json `validation`), so report, metrics and `cscf predict` all use the choices.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cscf_model import model_from_checkpoint
from cscf_model.selection import Selection, apply_selection, select_on_validation

from tasks.ingest.features import check_features_file, find_bad_rows, read_features
from tasks.store import catalog
from tasks.store.inputs import InputError
from tasks.training.train import load_checkpoint

log = logging.getLogger("cscf.validation")



@dataclass
class ValidationSamples:
    """The usable samples of a validation file, in the model's modality and class order."""

    features: list[torch.Tensor]  # per modality (n, d_m), zeros where absent
    present: torch.Tensor  # (n, M) bool
    labels: torch.Tensor  # (n,) class index
    rejected: dict[str, int]  # reason -> rows set aside


def check_validation_file(path: str | Path) -> None:
    """The cheap check done before the pipeline starts: one readable Parquet file (its footer),
    else InputError naming it."""
    if not Path(path).is_file():
        raise InputError(f"{path}: validation data must be one Parquet file")
    check_features_file(path)


def read_validation(path: Path, modalities: list[str], dims: list[int], class_names: list[str]) -> ValidationSamples:
    """The validation file's usable samples; every bad row is logged by reason with example ids.
    A `split` column is ignored: every row is a validation row."""
    table = read_features(path)
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.nulls(len(table), pa.string()))
    reason = find_bad_rows(table, set(class_names))
    modality = table["modality"].to_pandas()
    lengths = pc.fill_null(pc.list_value_length(table["vector"]), 0).to_pandas()
    model_rules = (("unknown modality", ~modality.isin(modalities)),
                   ("wrong vector length", lengths != modality.map(dict(zip(modalities, dims)))))
    for why, bad in model_rules:
        reason[bad & (reason == "")] = why
    rejected = _log_rejected(table["sample_id"].to_pandas(), reason, path)
    good = table.filter(pa.array((reason == "").to_numpy()))
    if len(good) == 0:
        raise InputError(f"{path}: no usable validation rows left ({sum(rejected.values())} rejected: "
                         "see the warnings above)")
    return ValidationSamples(*_to_tensors(good, modalities, dims, class_names), rejected)


def _log_rejected(sample_id: pd.Series, reason: pd.Series, path: Path) -> dict[str, int]:
    """One warning per reason, with its row count and example sample ids, as the features stage
    logs its own; returns the counts."""
    bad = reason != ""
    counts = {}
    for why, ids in sample_id[bad].groupby(reason[bad]):
        log.warning("%s: %d row(s) rejected: %s (e.g. sample_id %s)", path, len(ids), why, ids.head(3).tolist())
        counts[str(why)] = len(ids)
    return counts


def _to_tensors(
    good: pa.Table, modalities: list[str], dims: list[int], class_names: list[str]
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Checked long-form rows (one class per sample, one row per sample and modality) as
    ValidationSamples' features, presence and labels."""
    ids, sample = np.unique(good["sample_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    modality = pd.Index(modalities).get_indexer(good["modality"].to_numpy(zero_copy_only=False))
    label = pd.Index(class_names).get_indexer(good["class_name"].to_numpy(zero_copy_only=False))
    labels = torch.zeros(len(ids), dtype=torch.long)
    labels[sample] = torch.from_numpy(label)
    present = torch.zeros(len(ids), len(modalities), dtype=torch.bool)
    present[sample, modality] = True
    features = []
    for m, d in enumerate(dims):
        rows = np.flatnonzero(modality == m)
        x = torch.zeros(len(ids), d)
        values = pc.list_flatten(good["vector"].take(pa.array(rows))).to_numpy(zero_copy_only=False)
        x[sample[rows]] = torch.from_numpy(values.reshape(len(rows), d).astype(np.float32))
        features.append(x)
    return features, present, labels


def validation_record(selection: Selection, modalities: list[str], file_sha256: str, samples: ValidationSamples
                      ) -> dict[str, Any]:
    """What the chosen model records (checkpoint, model.json `validation`, metrics.json
    diagnostics `validation_choices`): the file, its usable samples and rejected rows, the
    choices, and every candidate's score on the validation samples."""
    gates = selection.gate_scaling
    fits = {m: {"slope": a, "shift": b} for m, a, b in zip(modalities, gates.slopes, gates.shifts)}
    counts = {m: {"seen_samples": s, "unseen_samples": u}
              for m, s, u in zip(modalities, gates.seen_samples, gates.unseen_samples)}
    return {
        "file_sha256": file_sha256,
        "samples": len(samples.labels),
        "rejected_rows": samples.rejected,
        "chosen": {"fusion": selection.fusion, "top_k": selection.top_k, "gate_mix": selection.gate_mix,
                   "margins": dict(zip(modalities, selection.margins)), "gate_scaling": fits if gates.adopted else None},
        "candidates": {"multimodal_samples": selection.multimodal_samples,
                       "gate_scaling": {"accuracy_as_trained": gates.accuracy_as_trained,
                                        "accuracy_scaled": gates.accuracy_scaled, "adopted": gates.adopted,
                                        "per_modality": {m: fits[m] | counts[m] for m in modalities}},
                       "fusion": [asdict(s) for s in selection.fusion_scores],
                       "margins": {m: asdict(s) for m, s in zip(modalities, selection.margin_scores)}},
    }


def build_validation(workspace: Path, key: str, validation: str, train_key: str) -> None:
    """Choose CSCF's gate scaling, fusion, gate mix, top-k and margins on the validation file; write `<key>.pt`, the
    train stage's checkpoint `train_key` with the choices applied and recorded."""
    path = Path(validation)
    checkpoint = load_checkpoint(catalog.stage_output(workspace, "train", train_key, ".pt"))
    model = model_from_checkpoint(checkpoint).eval()
    modalities = list(checkpoint["modalities"])
    samples = read_validation(path, modalities, model.input_dims, list(checkpoint["class_names"]))
    selection = select_on_validation(model, model.encode_for_scoring(samples.features), samples.present, samples.labels)
    apply_selection(model, selection)
    checkpoint["config"] = model.config.to_dict()
    checkpoint["model"]["margin"] = model.margin.clone()
    checkpoint["model"].update({f"router.{k}": v for k, v in model.router.state_dict().items()})
    checkpoint["validation"] = validation_record(selection, modalities, hashlib.sha256(path.read_bytes()).hexdigest(),
                                                 samples)
    log.info("%s: %d samples (%d showing several modalities): gates %s, fusion %s, top-k %d, gate mix %s, "
             "margins %s (chosen on validation data)", path, len(samples.labels), selection.multimodal_samples,
             "rescaled" if selection.gate_scaling.adopted else "as trained", selection.fusion, selection.top_k,
             selection.gate_mix, dict(zip(modalities, selection.margins)))
    with catalog.atomic_path(catalog.stage_output(workspace, "validate", key, ".pt")) as tmp:
        torch.save(checkpoint, tmp)


def cscf_checkpoint(workspace: Path, train_key: str, validation_key: str | None) -> Path:
    """The CSCF checkpoint that evaluation scores and `--out` exports: the one chosen on
    validation data when there is one, else the train stage's."""
    if validation_key is None:
        return catalog.stage_output(workspace, "train", train_key, ".pt")
    return catalog.stage_output(workspace, "validate", validation_key, ".pt")
