"""Training stage: one method trained on the MMHCL training data, resumable.

After every epoch the full state goes to `<key>.partial/epoch-NNNN.pt` (written
atomically; only the newest is kept). A rerun after an interruption resumes from the
newest one instead of starting over. The finished model is `<key>.pt`, which holds
the resolved model and training configs, so it alone rebuilds the model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from cscf_model import TrainConfig, create_model, train
from cscf_model.calibration import fit_margins, text_aligned

from . import catalog
from .mmhcl_data import load_mmhcl

log = logging.getLogger("cscf.train")


def _partial_dir(workspace: Path, key: str) -> Path:
    return catalog.stage_dir(workspace, "train") / f"{key}.partial"


def _save(state: dict[str, Any], path: Path) -> None:
    with catalog.atomic_path(path) as tmp:
        torch.save(state, tmp)


def latest_checkpoint(workspace: Path, key: str) -> dict[str, Any] | None:
    """The newest epoch checkpoint of an interrupted run, if any."""
    found = sorted(_partial_dir(workspace, key).glob("epoch-*.pt"))
    return torch.load(found[-1], weights_only=False) if found else None


def build_training(
    workspace: Path,
    key: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    method: str,
    model_overrides: dict[str, Any],
    train_config: dict[str, Any],
) -> None:
    """Train `method` (a shipped model config name) and write `<key>.pt`.

    Text-aligned modalities are detected on training data; with calibration on, a second
    model trained on pseudo-seen classes chooses each modality's margin (calibration.py).
    """
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key)
    cfg = TrainConfig(**train_config)
    torch.manual_seed(cfg.seed)  # the initial weights too are a function of the seed
    aligned = text_aligned(data.train, data.class_emb)
    make_model = lambda seen: create_model(  # noqa: E731
        method, data.input_dims, data.class_emb, seen, aligned, **model_overrides)
    model = make_model(data.seen)
    resume = latest_checkpoint(workspace, key)
    if resume is not None:
        log.info("%s: resuming from epoch %d of %d", method, resume["epoch"] + 1, cfg.epochs)
    partial = _partial_dir(workspace, key)

    def on_epoch_end(state: dict[str, Any]) -> None:
        path = partial / f"epoch-{state['epoch']:04d}.pt"
        _save(state, path)
        for old in partial.glob("epoch-*.pt"):
            if old != path:
                old.unlink()

    model, losses = train(model, data.train, cfg, resume=resume, on_epoch_end=on_epoch_end,
                          log=lambda msg: log.debug("%s: %s", method, msg))
    final = latest_checkpoint(workspace, key)
    assert final is not None and final["epoch"] == cfg.epochs - 1
    final.pop("optimizer")
    if model.config.calibration == "stacking":
        c = model.config
        margins = fit_margins(make_model, data.train, data.seen, cfg, c.calibration_holdout,
                              c.calibration_criterion, c.calibration_max_seen_drop)
        final["model"]["margin"] = torch.tensor(margins)
        log.info("%s: calibrated stacking margins %s (chosen on training data)", method, margins)
    final["modalities"] = data.modalities
    final["class_names"] = data.class_names
    _save(final, catalog.stage_output(workspace, "train", key, ".pt"))
    shutil.rmtree(partial, ignore_errors=True)
    log.info("%s: trained %d epochs on %s samples, final loss %.4f", method, cfg.epochs,
             [len(y) for y in data.train.labels], losses[-1])
