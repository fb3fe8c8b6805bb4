"""Baseline stage: train one of the paper's seven baselines and score it on Table 1's subsets.

One cached step per (method, seed), so adding a method or a seed to a benchmark runs
only what is new. The trained weights are not kept: a baseline is only compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from cscf_model import TrainConfig
from cscf_model.baselines import create_baseline

from . import catalog
from .scoring import Predict, evaluate_method
from .mmhcl_data import load_mmhcl


def baseline_predict(model: Any) -> Predict:
    def predict(feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        out = model.predict(feats, present)
        return out.scores, out.dominant, None

    return predict


def build_baseline(
    workspace: Path,
    key: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    method: str,
    train_config: dict[str, Any],
) -> None:
    """Write `<key>.metrics.json` ({"method", "scores", "losses"}) and `<key>.predictions.parquet`."""
    data = load_mmhcl(workspace, features_key, split_key, embeddings_key)
    torch.manual_seed(train_config["seed"])
    model = create_baseline(method, data.input_dims, data.class_emb, data.seen)
    losses = model.fit(data.train, TrainConfig(**train_config))
    model.to("cpu").eval()
    scores, rows, _ = evaluate_method(baseline_predict(model), data)
    catalog.write_table(pa.Table.from_pylist([{"method": method, **r} for r in rows], schema=catalog.PREDICTIONS),
                        catalog.stage_output(workspace, "baselines", key, ".predictions.parquet"), catalog.PREDICTIONS)
    catalog.write_json({"method": method, "scores": scores, "losses": losses},
                       catalog.stage_output(workspace, "baselines", key, ".metrics.json"))
