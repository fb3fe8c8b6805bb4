"""Semantic mappers (A2S, B2S of eq. 1): feature vectors -> the class-semantic space.

OSRS uses K mappers of *different* architectures per modality (appendix B). Their
disagreement on a sample is what DMSS reads as intra-modality inconsistency, so they
must not be K copies of one network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class MapperBank(nn.ModuleList):
    """The K mappers of one modality, run as few matrix products as their shapes allow.

    Layers that read the same tensor (the first layers of the mappers without a norm, a
    residual's skip and branch) run as one matmul over their concatenated weights; later
    layers of equal shape run as one batched matmul. Each mapper keeps its own weights,
    activations and dropout, so the K stay different networks (DMSS reads their
    disagreement), and the state_dict keys are those of K separate modules. With
    `batched = False` they run one after another, the reference tests and benchmarks use.
    """

    def __init__(self, mappers: list[nn.Module]) -> None:
        super().__init__(mappers)
        self.batched = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d_in) -> (K, B, d_out)."""
        if not self.batched:
            return torch.stack([f(z) for f in self])
        outs: list[list[torch.Tensor]] = [[] for _ in self]
        live: list[_Chain] = []
        for k, f in enumerate(self):
            norm, chains = _chains(f)
            x = z if norm is None else norm(z)
            live += [(k, x, chain) for chain in chains]
        while live:  # each round runs the next Linear of every chain, then what follows it up to the next
            advanced, live = _next_linears(live), []
            for (k, _, chain), y in advanced:
                rest = 1
                while rest < len(chain) and not isinstance(chain[rest], nn.Linear):
                    y, rest = _pointwise(chain[rest], y), rest + 1
                if rest < len(chain):
                    live.append((k, y, chain[rest:]))
                else:
                    outs[k].append(y)
        return torch.stack([sum(o[1:], o[0]) for o in outs])


_Chain = tuple[int, torch.Tensor, list[nn.Module]]  # (mapper, input, layers still to run)


def _chains(mapper: nn.Module) -> tuple[nn.Module | None, list[list[nn.Module]]]:
    """A mapper (as build_mapper makes it) as its input norm and a sum of chains of layers,
    the first layer of each reading the (normed) input."""
    norm = None
    if isinstance(mapper, nn.Sequential) and isinstance(mapper[0], nn.LayerNorm):
        norm, mapper = mapper[0], mapper[1]
    if isinstance(mapper, Residual):
        return norm, _chains(mapper.skip)[1] + _chains(mapper.branch)[1]
    return norm, [list(mapper) if isinstance(mapper, nn.Sequential) else [mapper]]


def _next_linears(live: list[_Chain]) -> list[tuple[_Chain, torch.Tensor]]:
    """Each chain with the output of its next Linear: chains reading one tensor as one wide
    matmul, the others grouped by layer shape into batched matmuls."""
    by_input: dict[int, list[_Chain]] = {}
    for c in live:
        by_input.setdefault(id(c[1]), []).append(c)
    by_shape: dict[tuple[int, ...], list[_Chain]] = {}
    for group in by_input.values():
        if len(group) == 1:
            by_shape.setdefault(tuple(group[0][2][0].weight.shape), []).append(group[0])
    wide = [pair for group in by_input.values() if len(group) > 1 for pair in zip(group, _wide(group))]
    return wide + [pair for group in by_shape.values() for pair in zip(group, _stacked(group))]


def _wide(group: list[_Chain]) -> list[torch.Tensor]:
    """The first Linear of chains that read one tensor, as one matmul over concatenated weights."""
    layers = [c[2][0] for c in group]
    w, b = torch.cat([_cast(f.weight) for f in layers]), torch.cat([_cast(f.bias) for f in layers])
    y = F.linear(group[0][1], w, b)
    return list(y.split([f.out_features for f in layers], -1))


def _stacked(group: list[_Chain]) -> list[torch.Tensor]:
    """The next Linear of chains with equal layer shapes, as one batched matmul."""
    layers = [c[2][0] for c in group]
    if len(group) == 1:
        return [layers[0](group[0][1])]
    w = torch.stack([_cast(f.weight) for f in layers]).transpose(1, 2)  # (G, d_in, d_out)
    b = torch.stack([_cast(f.bias) for f in layers])[:, None]  # (G, 1, d_out)
    return list(torch.baddbmm(b, torch.stack([c[1] for c in group]), w).unbind(0))


def _cast(t: torch.Tensor) -> torch.Tensor:
    """`t` in the autocast dtype when autocast is on: concatenating cast copies moves half
    the bytes of casting the concatenation."""
    device = t.device.type
    return t.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else t


def _pointwise(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """An activation, or dropout with p rounded to 1/65536 and four 16-bit draws per 64-bit
    random number: PyTorch's bernoulli_ (9 ns an element on one core here) was 12% of a
    training step."""
    if not (isinstance(layer, nn.Dropout) and layer.training and 0 < layer.p < 1):
        return layer(y)
    n = y.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=y.device).random_(-(2**63), None)
    keep = bits.view(torch.int16)[:n].view(y.shape) >= round(layer.p * 65536) - 32768
    return y * torch.where(keep, 1 / (1 - layer.p), 0.0).to(y.dtype)  # a multiplier: cheaper than where on y


