"""Training stage: one method trained on the MMHCL training data, resumable.

After every epoch the full state goes to `<key>.partial/epoch-NNNN.pt` (written
atomically; only the newest is kept), and the calibration's pseudo-unseen training
does the same in `<key>.partial/calibration/`. A rerun after an interruption, even a
SIGKILL, resumes from the newest ones instead of starting over. The finished model is
`<key>.pt`, which holds the resolved model and training configs, so it alone rebuilds
the model. Checkpoints hold tensors and plain values only and load with
`weights_only=True`: a file planted in a shared workspace cannot run code. Two runs
never train one key at once (`Stage.run` holds the key's lock), so the partial folder
has one writer.
"""

from __future__ import annotations

import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cscf_model import TrainConfig, create_model, train
from cscf_model.calibration import MARGIN_RULES, choose_margins, text_aligned, train_pseudo_unseen
from cscf_model.router import fit_router_from_model
from cscf_model.trainer import resolve_device, resolve_precision

from tasks.store import catalog
from tasks.training.mmhcl_data import load_mmhcl
from tasks.store.progress import epoch_progress

log = logging.getLogger("cscf.train")


def _partial_dir(workspace: Path, key: str) -> Path:
    return catalog.stage_dir(workspace, "train") / f"{key}.partial"


def _save(state: dict[str, Any], path: Path) -> None:
    with catalog.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A training state saved by this stage; never unpickles anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a checkpoint of tensors and plain values; refusing to unpickle it") from e


@dataclass(frozen=True)
class Checkpoints:
    """The epoch checkpoints of one training in `folder`; only the newest is kept."""

    folder: Path

    def latest(self) -> dict[str, Any] | None:
        found = sorted(self.folder.glob("epoch-*.pt"))
        return load_checkpoint(found[-1]) if found else None

    def save(self, state: dict[str, Any]) -> None:
        path = self.folder / f"epoch-{state['epoch']:04d}.pt"
        _save(state, path)
        for old in self.folder.glob("epoch-*.pt"):
            if old != path:
                old.unlink()


def latest_checkpoint(workspace: Path, key: str) -> dict[str, Any] | None:
    """The newest epoch checkpoint of an interrupted run, if any."""
    return Checkpoints(_partial_dir(workspace, key)).latest()


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

    Text-aligned modalities are detected on training data. With calibration or the learned
    router on, a second model trained on pseudo-seen classes chooses each modality's margin
    (calibration.py) and gives the router its examples of classes a modality never saw
    (router.py).
    """
    cfg = TrainConfig(**train_config)
    # a bf16 training keeps its vectors in bf16 too (half the memory; the math stays fp32)
    storage = torch.bfloat16 if resolve_precision(cfg.precision, resolve_device(cfg.device)) == "bf16" else torch.float32
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key, parts=("train",), train_dtype=storage)
    torch.manual_seed(cfg.seed)  # the initial weights too are a function of the seed
    aligned = text_aligned(data.train, data.class_emb)
    dims, class_emb, sizes = data.input_dims, data.class_emb, [len(y) for y in data.train.labels]
    make_model = lambda seen: create_model(method, dims, class_emb, seen, aligned, **model_overrides)  # noqa: E731
    model = make_model(data.seen)
    partial = _partial_dir(workspace, key)
    main, calibration = Checkpoints(partial), Checkpoints(partial / "calibration")
    resume = _resumed(main, method, "training", cfg.epochs)
    with epoch_progress(f"{method} training", cfg.epochs, log, resume, main.save) as on_epoch_end:
        model, losses = train(model, data.train, cfg, resume=resume, on_epoch_end=on_epoch_end)
    final = main.latest()
    if final is None or final["epoch"] != cfg.epochs - 1:
        raise RuntimeError(f"{partial}: training {key} ended without its epoch-{cfg.epochs - 1:04d} checkpoint "
                           "(removed by another process?); rerun to resume")
    final.pop("optimizer")
    c = model.config
    if c.calibration == "stacking" or c.router == "gate":
        resume = _resumed(calibration, method, "calibration training", cfg.epochs)
        with epoch_progress(f"{method} calibration training", cfg.epochs, log, resume, calibration.save) as on_epoch_end:
            pseudo = train_pseudo_unseen(make_model, data.train, data.seen, cfg, c.calibration_holdout,
                                         resume=resume, on_epoch_end=on_epoch_end)
    modalities, class_names = data.modalities, data.class_names
    del data  # the pseudo-unseen split holds what the margins and the router read: free the rest
    if c.calibration == "stacking":
        by_criterion = {criterion: choose_margins(pseudo.model, pseudo.val, pseudo.pseudo_seen, criterion,
                                                  c.calibration_max_seen_drop, model.aligned)
                        for criterion in MARGIN_RULES.values()}
        margins = by_criterion[c.calibration_criterion]
        final["model"]["margin"] = torch.tensor(margins)
        # every rule's operating point, for the report's seen/unseen curve
        final["margins_by_rule"] = {rule: by_criterion[criterion] for rule, criterion in MARGIN_RULES.items()}
        log.info("%s: calibrated stacking margins %s (chosen on training data)", method, margins)
    if c.router == "gate":  # issue 12: gates from the pseudo-unseen classes of the training data
        router = fit_router_from_model(pseudo.model, pseudo.fit, pseudo.val, pseudo.pseudo_seen,
                                       c.calibration_holdout, cfg.seed, bank_size=c.router_bank_size)
        final["model"].update({f"router.{k}": v for k, v in router.state_dict().items()})
        log.info("%s: learned router fitted on training data (gates read logits: %s)", method,
                 [gate.reads_logits for gate in router.gates])
    final["modalities"] = modalities
    final["class_names"] = class_names
    _save(final, catalog.stage_output(workspace, "train", key, ".pt"))
    shutil.rmtree(partial, ignore_errors=True)
    log.info("%s: trained %d epochs on %s samples, final loss %.4f", method, cfg.epochs,
             sizes, losses[-1])


def _resumed(checkpoints: Checkpoints, method: str, what: str, epochs: int) -> dict[str, Any] | None:
    """The state to resume `what` from, logged, or None to start it afresh."""
    state = checkpoints.latest()
    if state is not None:
        log.info("%s: resuming from epoch %d of %d (%s)", method, state["epoch"] + 1, epochs, what)
    return state
