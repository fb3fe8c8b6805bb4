"""Model configurations as data: JSON files in `model_configs/` become typed dataclasses here.

One JSON file per method (CSCF and its ablations); `list_models()` shows what exists.
A checkpoint stores the resolved `ModelConfig` so that loading rebuilds the same model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .router import BANK_SIZE

CONFIG_DIR = Path(__file__).parent / "model_configs"


@dataclass(frozen=True)
class MapperConfig:
    """One semantic mapper (A2S / B2S in eq. 1). Different kinds give the ensemble its diversity."""

    kind: str = "mlp"  # "linear" | "mlp" | "residual"
    hidden: tuple[int, ...] = (512,)  # widths of the hidden layers (ignored by "linear")
    activation: str = "relu"  # "relu" | "gelu" | "silu" | "tanh"
    dropout: float = 0.1
    norm: bool = False  # LayerNorm on the input: makes a mapper insensitive to feature scale


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a method; fields carry the reason for their default."""

    name: str = "CSCF"
    # "semantic": OSRS, logits = scale * cos(mapper(x), c_i) (eq. 2).
    # "linear": the ablation baseline B, a plain per-modality linear classifier, no semantics.
    head: str = "semantic"
    # How a sample seen through several modalities is classified:
    # "mean" (average the modalities' logits: B, B+O), "dominant" (DMSS alone: B+O+D),
    # "csmf" (DMSS + class-similarity fusion, eq. 9: CSCF), "gate" (the learned router's
    # fusion; see `router` below).
    fusion: str = "csmf"
    mappers: tuple[MapperConfig, ...] = (MapperConfig(),)
    # gamma^2 of eq. 2. DMSS reads entropies of these logits, so the scale decides how sharply
    # it separates the modality that saw a class from the one that did not. Measured DMSS
    # routing accuracy on the embedded default: 59.9% at 10, 89.9% at 30; on two-view
    # digits, rescaling a scale-30 model's logits x0.33 / x1 / x3 gives 62% / 79% / 77%.
    logit_scale: float = 30.0
    learn_scale: bool = False  # True: learn log(gamma^2) (as CLIP's logit_scale); False: fixed
    # CSMF (eqs. 8-9).
    top_k: int = 3  # classes kept per row of the pruned similarity matrix S^*
    csmf_weights: str = "similarity"  # "similarity" (paper) | "uniform" (Figure 4's "w/o class similarity")
    csmf_normalize: bool = True  # rows of S^* sum to 1 and aux logits are centred (see csmf.py)
    csmf_weight: float = 1.0  # lambda in lo = lo^dom + lambda * S^aux lo^aux
    # Training (eq. 10): softmax over "all" classes (paper) or only the modality's "seen" classes.
    loss_classes: str = "all"
    # A missing modality is "mask"ed out of DMSS/CSMF, or fed as "zero" vectors (appendix D).
    missing: str = "mask"
    # Unseen classes (issue 6). keep_geometry: a modality whose features already share the
    # class-semantic space is mapped as x + g*f(x) with g starting at 0 (calibration.py).
    keep_geometry: bool = True
    # calibration: "stacking" subtracts a per-modality margin from seen-class logits, chosen
    # on training data (a share calibration_holdout of each modality's seen classes held out
    # as pseudo-unseen) by calibration_criterion: "harmonic" (the harmonic mean of seen and
    # unseen accuracy, as the generalized zero-shot literature chooses it, for modalities
    # aligned with the class semantics; the others keep "mean", calibration.margin_rule) or
    # "mean" (the arithmetic mean, what acc_mix weighs, costing at most
    # calibration_max_seen_drop points of seen accuracy there); "none" keeps raw logits.
    # Measured on validation splits (docs/results/development/): "harmonic" lifts the
    # text-aligned modalities' unseen accuracy to 0.7-1.0 of the training-free cosine rule
    # (pydocs3 doc 48 -> 59 of 59) for 6-19 points of their seen accuracy; "mean" within 3
    # points, the former default, left a weak aligned view (pyapi4 sig: 6.1 of 14.5) below
    # half of the cosine rule.
    calibration: str = "stacking"
    calibration_criterion: str = "harmonic"
    calibration_holdout: float = 0.25
    calibration_max_seen_drop: float | None = 3.0
    # Routing (issue 12, router.py). router: who decides which modality saw the class:
    # "dmss" (the paper's entropies, eqs. 3-7) or "gate" (per-modality gates fitted on
    # held-out seen classes of the training data, combined by Bayes' rule over seen
    # patterns); with "gate", fusion "dominant"/"csmf" take the modality most likely to
    # have seen the class as dominant. fusion "gate" (router "gate" only) fuses by
    # gate_mix: "product" (every present modality's own distribution over all classes,
    # from its gate and temperature-scaled logits, multiplied), "prior" (mean of the
    # present modalities' logits + log P(pattern of the class | x)), "soft" (COSMO's
    # mixture of per-pattern softmaxes) or "hard".
    # unimodal: "stacking" (calibration's margin) or "gate" (the gate's mixture) for
    # samples that show one modality, when the router is "gate".
    router: str = "dmss"
    gate_mix: str = "prior"
    unimodal: str = "stacking"
    # Most training rows (the same number per class) a gate's k-NN distance is measured
    # against: the bank is stored in the model, and scoring costs test rows x bank rows.
    router_bank_size: int = BANK_SIZE

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (mapper dicts are converted)."""
        if "mappers" in changes:
            changes["mappers"] = tuple(_mapper(m) for m in changes["mappers"])
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        _check(self.head, ("semantic", "linear"), "head")
        _check(self.fusion, ("mean", "dominant", "csmf", "gate"), "fusion")
        _check(self.router, ("dmss", "gate"), "router")
        _check(self.gate_mix, ("product", "prior", "soft", "hard"), "gate_mix")
        _check(self.unimodal, ("stacking", "gate"), "unimodal")
        if self.router == "dmss" and (self.fusion == "gate" or self.unimodal == "gate"):
            raise ValueError('fusion="gate" and unimodal="gate" need router="gate"')
        _check(self.csmf_weights, ("similarity", "uniform"), "csmf_weights")
        _check(self.loss_classes, ("all", "seen"), "loss_classes")
        _check(self.missing, ("mask", "zero"), "missing")
        _check(self.calibration, ("stacking", "none"), "calibration")
        _check(self.calibration_criterion, ("harmonic", "mean"), "calibration_criterion")
        if not 0 < self.calibration_holdout < 1:
            raise ValueError(f"calibration_holdout must be in (0, 1), got {self.calibration_holdout}")
        if self.calibration_max_seen_drop is not None and self.calibration_max_seen_drop < 0:
            raise ValueError(f"calibration_max_seen_drop must be >= 0 or null, got {self.calibration_max_seen_drop}")
        if self.router_bank_size < 1:
            raise ValueError(f"router_bank_size must be >= 1, got {self.router_bank_size}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.mappers:
            raise ValueError("a model needs at least one mapper")


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def _mapper(m: MapperConfig | dict[str, Any]) -> MapperConfig:
    if isinstance(m, MapperConfig):
        return m
    m = dict(m)
    unknown = sorted(set(m) - {f.name for f in dataclasses.fields(MapperConfig)})
    if unknown:
        raise ValueError(f"unknown mapper config keys {unknown}")
    if "hidden" in m:
        m["hidden"] = tuple(m["hidden"])
    return MapperConfig(**m)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from a JSON-like dict, rejecting unknown keys by name."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}")
    d = dict(d)
    if "mappers" in d:
        d["mappers"] = tuple(_mapper(m) for m in d["mappers"])
    return ModelConfig(**d)


def list_models() -> list[str]:
    """Names of the shipped model configs (the JSON files' `name` fields)."""
    return [json.loads(p.read_text())["name"] for p in sorted(CONFIG_DIR.glob("*.json"))]


def load_config(name: str) -> ModelConfig:
    """The shipped config called `name` (e.g. "CSCF", "B+O").

    A config may name a `base` config and list only what differs from it: the ablations
    B+O and B+O+D are CSCF with another fusion, and should stay so when CSCF changes.
    """
    for p in sorted(CONFIG_DIR.glob("*.json")):
        d = json.loads(p.read_text())
        if d["name"] == name:
            base = d.pop("base", None)
            if base is None:
                return config_from_dict(d)
            return config_from_dict({**load_config(base).to_dict(), **d})
    raise ValueError(f"unknown model {name!r}; known: {list_models()}")
