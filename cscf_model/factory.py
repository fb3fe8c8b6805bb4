"""One factory for every method: a shipped config name (or a ModelConfig) -> a model."""

from __future__ import annotations

from typing import Any

import torch

from .config import ModelConfig, config_from_dict, load_config
from .cscf import CSCF


def create_model(
    config: str | ModelConfig,
    input_dims: list[int],
    class_emb: torch.Tensor,
    seen: torch.Tensor,
    aligned: torch.Tensor | None = None,
    **overrides: Any,
) -> CSCF:
    """Build CSCF or one of its ablations ("B", "B+O", "B+O+D").

    `aligned` (M,) marks text-aligned modalities (calibration.text_aligned); `overrides`
    change config fields (e.g. top_k=5) without editing the JSON files.
    """
    cfg = load_config(config) if isinstance(config, str) else config
    if overrides:
        cfg = cfg.replace(**overrides)
    if seen.shape != (len(input_dims), class_emb.shape[0]):
        raise ValueError(
            f"seen must be (modalities={len(input_dims)}, classes={class_emb.shape[0]}), "
            f"got {tuple(seen.shape)}"
        )
    return CSCF(cfg, input_dims, class_emb, seen, aligned)


def model_from_checkpoint(state: dict[str, Any]) -> CSCF:
    """Rebuild a trained model from a checkpoint dict written by `trainer.checkpoint_state`."""
    model = CSCF(
        config_from_dict(state["config"]),
        state["input_dims"],
        state["model"]["class_emb"],
        state["model"]["seen"],
        state["model"]["aligned"],
    )
    model.load_state_dict(state["model"])
    return model
