"""Baseline stage: train one of the paper's seven baselines and score it on Table 1's subsets.

One cached step per (method, seed), so adding a method or a seed to a benchmark runs
only what is new. The trained weights are not kept: a baseline is only compared.

A method with per-modality class scores (the zero-shot ones) is scored twice: as
published (`<method>`) and with CSCF's calibrated stacking (`<method> + cal`), its
margins chosen exactly as CSCF's, on training data only, by a second copy trained on
pseudo-seen classes (cscf_model.baselines.fit_margins), so the comparison gives every
method the same help.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cscf_model import TrainConfig, load_config
from cscf_model.calibration import text_aligned
from cscf_model.baselines import (
    CALIBRATABLE, NEEDS_EXTERNAL, ExternalSemantics, create_baseline, fit_margins, head_noun_taxonomy,
)

from tasks.store import catalog
from tasks.training.mmhcl_data import MMHCLData, load_mmhcl
from tasks.evaluation.scoring import Predict, evaluate_method, on_test, with_method
from tasks.encoders.text_encoders import build_text_encoder

# DSECN's external class names: the ImageNet-1k class names as open_clip ships them
# (open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES), one per line. Pinned by digest:
# this module's source enters the stage's cache key, the list's bytes do not.
EXTERNAL_NAMES = Path(str(resources.files("tasks.evaluation") / "class_names" / "imagenet1k.txt"))
EXTERNAL_NAMES_SHA256 = "8800e39242cbed4c6889376e20a49cfdaf4f84a773a6686d15c3b39972ef94c4"
CALIBRATED = " + cal"


def baseline_predict(model: Any) -> Predict:
    def predict(feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        out = model.predict(feats, present)
        return out.scores, out.dominant, None

    return predict


def read_external_names(path: Path = EXTERNAL_NAMES, sha256: str = EXTERNAL_NAMES_SHA256) -> list[str]:
    """The external class names, refused if the file is not the pinned list."""
    raw = Path(path).read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"{path}: content differs from the pinned list; update EXTERNAL_NAMES_SHA256 with it")
    return [line.strip() for line in raw.decode().splitlines() if line.strip()]


def external_semantics(workspace: Path, encoder: str, names: list[str]) -> ExternalSemantics:
    """The external names and their head-noun hypernyms embedded by `encoder`, the run's
    text encoder. Embedded once per (encoder, names) into the workspace's baselines folder."""
    hyper, targets = head_noun_taxonomy(names)
    texts = list(dict.fromkeys([*names, *hyper]))
    digest = hashlib.sha256("\n".join([encoder, *texts]).encode()).hexdigest()[:16]
    path = catalog.stage_output(workspace, "baselines", f"external-{digest}")
    if not path.exists():
        vectors = build_text_encoder(encoder).encode(texts)
        table = pa.table({"class_name": texts, "vector": catalog.vector_column(vectors), "encoder": [encoder] * len(texts)})
        catalog.write_table(table, path, catalog.CLASS_EMBEDDINGS)
    table = catalog.read_table(path, catalog.CLASS_EMBEDDINGS)
    row = {name: i for i, name in enumerate(table.column("class_name").to_pylist())}
    vectors = torch.tensor(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), dtype=torch.float32)
    return ExternalSemantics(
        names=vectors[[row[n] for n in names]],
        hyper=vectors[[row[h] for h in hyper]],
        hyper_target=torch.tensor(targets, dtype=torch.long),
    )


def run_encoder(workspace: Path, embeddings_key: str) -> str:
    """The text encoder that embedded this run's classes (written by the class_embeddings stage)."""
    table = catalog.read_table(catalog.stage_output(workspace, "class_embeddings", embeddings_key))
    return str(table.column("encoder")[0])


def build_baseline(
    workspace: Path,
    key: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    method: str,
    train_config: dict[str, Any],
) -> None:
    """Write `<key>.metrics.json` ({"method", "losses", "margins", "methods": {name: scores}},
    names `<method>` and, for a calibratable method, `<method> + cal`) and `<key>.predictions.parquet`."""
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key)
    cfg = TrainConfig(**train_config)
    external = None
    if method in NEEDS_EXTERNAL:
        external = external_semantics(workspace, run_encoder(workspace, embeddings_key), read_external_names())

    def make(seen: torch.Tensor) -> Any:
        return create_baseline(method, data.input_dims, data.class_emb, seen, external)

    model = make(data.seen)
    losses = model.fit(data.train, cfg)
    methods, rows = _score(method, model, data)
    margins = None
    if method in CALIBRATABLE:
        c = load_config("CSCF")  # the margin is chosen exactly as CSCF's
        margins = fit_margins(make, data.train, data.seen, cfg, c.calibration_holdout,
                              c.calibration_criterion, c.calibration_max_seen_drop,
                              text_aligned(data.train, data.class_emb))
        model.margin.copy_(torch.tensor(margins))
        calibrated, cal_rows = _score(method + CALIBRATED, model, data)
        methods, rows = {**methods, **calibrated}, pa.concat_tables([rows, cal_rows])
    catalog.write_table(rows,
                        catalog.stage_output(workspace, "baselines", key, ".predictions.parquet"), catalog.PREDICTIONS)
    catalog.write_json({"method": method, "losses": losses, "margins": margins, "methods": methods},
                       catalog.stage_output(workspace, "baselines", key, ".metrics.json"))


def _score(name: str, model: Any, data: MMHCLData) -> tuple[dict[str, Any], pa.Table]:
    scores, rows, _ = evaluate_method(on_test(baseline_predict(model), data), data)
    return {name: scores}, with_method(rows, name)
