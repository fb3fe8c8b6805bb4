"""Semantic mappers (A2S, B2S of eq. 1): feature vectors -> the class-semantic space.

OSRS uses K mappers of *different* architectures per modality (appendix B). Their
disagreement on a sample is what DMSS reads as intra-modality inconsistency, so they
must not be K copies of one network.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MapperConfig

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _mlp(d_in: int, hidden: tuple[int, ...], d_out: int, cfg: MapperConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for h in hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[cfg.activation](), nn.Dropout(cfg.dropout)]
        width = h
    layers.append(nn.Linear(width, d_out))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """A linear projection plus a non-linear correction: close to linear early in training."""

    def __init__(self, d_in: int, d_out: int, cfg: MapperConfig) -> None:
        super().__init__()
        self.skip = nn.Linear(d_in, d_out)
        self.branch = _mlp(d_in, cfg.hidden, d_out, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.branch(x)


def build_mapper(cfg: MapperConfig, d_in: int, d_out: int) -> nn.Module:
    """One mapper from its config; `norm` puts a LayerNorm in front."""
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {cfg.activation!r}")
    if cfg.kind == "linear":
        body: nn.Module = nn.Linear(d_in, d_out)
    elif cfg.kind == "mlp":
        body = _mlp(d_in, cfg.hidden, d_out, cfg)
    elif cfg.kind == "residual":
        body = Residual(d_in, d_out, cfg)
    else:
        raise ValueError(f"unknown mapper kind {cfg.kind!r}; known: linear, mlp, residual")
    return nn.Sequential(nn.LayerNorm(d_in), body) if cfg.norm else body
