"""CSCF: Class Similarity-based Cross-modal Fusion (paper section 3), top to bottom.

OSRS (3.1)  each modality has K mappers into the class-semantic space; logits are scaled
            cosine similarities to the class semantic vectors c_i.            eq. 1-2
DMSS (3.2)  entropies of the K predictions give each modality an uncertainty u; the
            modality with the lowest u dominates.                            eq. 3-7
CSMF (3.3)  the auxiliary modality's logits, re-weighted by a top-k pruned class-
            similarity matrix, are added to the dominant modality's.         eq. 8-9
Router      config.router="gate" replaces DMSS by gates learned from held-out seen
            classes of the training data (router.py, issue 12); fusion="gate" fuses
            by the gates' posterior over which modalities saw the class.
Loss (3.4)  per modality: mean CE of the K mappers + CE of their mean.      eq. 10

Modalities are a list (the paper has two, A and B); a sample carries a presence mask
so that unimodal and bimodal samples go through the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .data import float_blocks, standard_scale
from .mappers import MapperBank, build_mapper
from .router import GateRouter, expert_product, present_mean, routed_probs, router_from_state, seen_patterns

_EPS = 1e-8
SCORING_CHUNK = 8192  # samples encoded at a time by CSCF.encode_for_scoring


# ----------------------------------------------------------------------------- OSRS


def osrs_logits(s_hat: torch.Tensor, class_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Eq. 2: lo_i = gamma^2 * cos(s_hat, c_i).  (B, d_s), (N, d_s) -> (B, N)."""
    return scale * F.normalize(s_hat, dim=-1) @ F.normalize(class_emb, dim=-1).T


# ----------------------------------------------------------------------------- DMSS


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_n p_n log p_n over the last axis."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def _share(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x_m / sum over present modalities of x (eqs. 5 and 6); equal shares when all are 0."""
    x = torch.where(present, x + _EPS, torch.zeros_like(x))  # (M, B)
    return x / x.sum(0, keepdim=True).clamp_min(_EPS)


def dmss_entropies(logits_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entropies DMSS reads from logits_k (M, K, B, N): of each module's prediction
    (M, K, B), eqs. 3-4, and of the prediction of their mean logits (M, B), eq. 6."""
    return entropy(logits_k.softmax(-1)), entropy(logits_k.mean(1).softmax(-1))


def dmss_from_entropies(h_k: torch.Tensor, h_mean: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eqs. 4-7 on dmss_entropies' output: u^m = Inc^m + dif^m, (M, B); +inf where absent."""
    e = h_k.std(dim=1, unbiased=False)  # (M, B): sqrt(1/K sum (H_i - H_mean)^2)  eq. 4
    inc = _share(e, present)  # eq. 5
    dif = _share(h_mean, present)  # eq. 6
    u = inc + dif  # eq. 7
    return torch.where(present, u, torch.full_like(u, math.inf))


def dmss_uncertainty(logits_k: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Eqs. 3-7: u^m = Inc^m + dif^m for every modality and sample.

    logits_k: (M, K, B, N) logits of the K OSRS modules; present: (M, B) bool.
    Returns (M, B); absent modalities get +inf so they are never dominant.
    """
    return dmss_from_entropies(*dmss_entropies(logits_k), present)


# ----------------------------------------------------------------------------- CSMF


def class_similarity(class_emb: torch.Tensor) -> torch.Tensor:
    """Eq. 8: S_ij = cos(c_i, c_j).  (N, d_s) -> (N, N)."""
    c = F.normalize(class_emb, dim=-1)
    return c @ c.T


def pruned_similarity(
    sim: torch.Tensor, seen: torch.Tensor, top_k: int, weights: str, normalize: bool
) -> torch.Tensor:
    """S^m of eq. 9 for a modality m whose seen classes are the True entries of `seen` (N,).

    Choice (the paper says only "keep the top-k most similar classes for each seen
    class"): row i of S^m keeps the k classes j *seen by m* most similar to class i, so
    the auxiliary modality only speaks through classes it was trained on, and each class
    i hears from its k nearest of them (class i itself first when m saw it).

    normalize=True makes each kept row sum to 1 (negative similarities clipped to 0).
    Without it S^m lo^m is a sum of up to k logits and the auxiliary modality enters the
    fusion at up to k times the dominant modality's scale (the literal eq. 9; measured
    in the README to drown the dominant modality).
    """
    masked = sim.masked_fill(~seen[None, :], -math.inf)  # only columns seen by m
    k = min(top_k, int(seen.sum()))
    idx = masked.topk(k, dim=1).indices  # (N, k)
    w = sim.gather(1, idx) if weights == "similarity" else torch.ones_like(idx, dtype=sim.dtype)
    if normalize:
        w = w.clamp_min(0)
        w = w / w.sum(1, keepdim=True).clamp_min(_EPS)
    return torch.zeros_like(sim).scatter(1, idx, w.to(sim.dtype))  # autocast may leave w in bf16


def csmf_fuse(
    logits: torch.Tensor,
    u: torch.Tensor,
    present: torch.Tensor,
    s_prune: torch.Tensor,
    center: bool,
    weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: lo = lo^dom + lambda * sum_aux S^aux lo^aux, dominant = argmin_m u^m.

    logits (M, B, N); u, present (M, B); s_prune (M, N, N).  Returns fused (B, N) and
    dominant (B,). `center` subtracts each auxiliary logit vector's mean first: softmax
    ignores that shift for the auxiliary alone, and it makes classes that S^aux leaves
    empty receive 0 (no evidence) rather than an offset.
    """
    dominant = u.argmin(0)  # (B,)
    one_hot = F.one_hot(dominant, logits.shape[0]).T.bool()  # (M, B)
    aux = logits - logits.mean(-1, keepdim=True) if center else logits
    refined = torch.einsum("mij,mbj->mbi", s_prune, aux)  # (M, B, N): S^m lo^m
    is_aux = present & ~one_hot
    fused = (logits * one_hot[..., None]).sum(0) + weight * (refined * is_aux[..., None]).sum(0)
    return fused, dominant


# ----------------------------------------------------------------------------- model


@dataclass
class CSCFOutput:
    raw_k: torch.Tensor | None  # (M, K, B, N) every OSRS module's logits before calibration (None: dropped)
    offset: torch.Tensor  # (M, B, N) calibrated stacking's offset (CSCF.calibration_offset)
    logits: torch.Tensor  # (M, B, N) per-modality logits, mean over the K modules, calibrated
    u: torch.Tensor  # (M, B) DMSS uncertainty (router "gate": 1 - P(m saw the class)), +inf where absent
    dominant: torch.Tensor  # (B,) index of the dominant modality
    fused: torch.Tensor  # (B, N) the model's prediction under its `fusion`

    @property
    def logits_k(self) -> torch.Tensor:
        """(M, K, B, N) every OSRS module's calibrated logits (what the loss reads)."""
        if self.raw_k is None:
            raise ValueError("this output was fused from an encoding without per-module logits")
        return self.raw_k - self.offset[:, None]


@dataclass
class Encoded:
    """What `CSCF.encode` computes once per sample whatever modalities it shows."""

    raw: torch.Tensor  # (M, B, N) raw logits, mean over the K modules
    raw_k: torch.Tensor | None  # (M, K, B, N) every module's raw logits; None once for_scoring dropped them
    gate_logit: torch.Tensor | None  # (M, B) the learned router's gate logits; None without one
    entropies: tuple[torch.Tensor, torch.Tensor] | None = None  # dmss_entropies(raw_k), once computed

    def dmss_entropies(self) -> tuple[torch.Tensor, torch.Tensor]:
        """dmss_entropies of the raw logits: kept when for_scoring computed them, else computed."""
        if self.entropies is not None:
            return self.entropies
        if self.raw_k is None:
            raise ValueError("an encoding without per-module logits needs its entropies kept")
        return dmss_entropies(self.raw_k)

    def for_scoring(self, keep_k: bool = False) -> "Encoded":
        """What fusing under many presence masks reads: the mean logits, gate logits and DMSS
        entropies; the per-module logits (K times the memory) only with `keep_k`."""
        return Encoded(self.raw, self.raw_k if keep_k else None, self.gate_logit, self.dmss_entropies())

    def _fields(self) -> list[tuple[torch.Tensor | None, int]]:
        """Every tensor with its sample axis: raw, raw_k, gate_logit, the two entropies."""
        h = self.entropies or (None, None)
        return [(self.raw, 1), (self.raw_k, 2), (self.gate_logit, 1), (h[0], 2), (h[1], 1)]

    @staticmethod
    def concat(parts: Iterable["Encoded"], n: int) -> "Encoded":
        """The encodings of consecutive batches of `n` samples in all, as one. Each batch is
        copied, as it comes, into tensors allocated at the first: a list of the batches next
        to their torch.cat held a test set's encoding twice (2.7 GB more at 13x VGGSound)."""
        out: list[torch.Tensor | None] | None = None
        start = 0
        for part in parts:
            fields = part._fields()
            if out is None:
                out = [None if t is None else t.new_empty(t.shape[:axis] + (n,) + t.shape[axis + 1:])
                       for t, axis in fields]
            for dest, (t, axis) in zip(out, fields):
                if t is not None:
                    dest.narrow(axis, start, t.shape[axis]).copy_(t)
            start += part.raw.shape[1]
        if out is None or start != n:
            raise ValueError(f"Encoded.concat: batches of {start} samples, {n} expected")
        raw, raw_k, gate_logit, h_k, h_mean = out
        return Encoded(raw, raw_k, gate_logit, None if h_k is None else (h_k, h_mean))

    def rows(self, index: torch.Tensor) -> "Encoded":
        """The encoding of the samples at `index` (B',)."""
        pick = lambda t, axis: None if t is None else t.index_select(axis, index)  # noqa: E731
        h = None if self.entropies is None else (pick(self.entropies[0], 2), pick(self.entropies[1], 1))
        return Encoded(pick(self.raw, 1), pick(self.raw_k, 2), pick(self.gate_logit, 1), h)


class CSCF(nn.Module):
    """CSCF and its ablations (config.head / config.fusion) for M modalities over N classes.

    class_emb (N, d_s) are the class semantic vectors; seen (M, N) marks the classes each
    modality saw in training (used by CSMF's pruning and the "seen" loss); aligned (M,)
    marks modalities whose features already share the class-semantic space (see
    calibration.text_aligned). All are buffers, so a checkpoint's state_dict rebuilds
    the model exactly. `margin` (M,) is calibrated stacking's margin per modality,
    subtracted from its seen classes' logits; 0 until calibration.fit_margins sets it.
    """

    def __init__(
        self,
        config: ModelConfig,
        input_dims: list[int],
        class_emb: torch.Tensor,
        seen: torch.Tensor,
        aligned: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.input_dims = list(input_dims)
        n_classes, d_s = class_emb.shape
        self.register_buffer("class_emb", class_emb.float().clone())
        self.register_buffer("seen", seen.bool().clone())
        aligned = torch.zeros(len(input_dims), dtype=torch.bool) if aligned is None else aligned.bool().clone()
        self.register_buffer("aligned", aligned & torch.tensor([d == d_s for d in input_dims]) & config.keep_geometry)
        self.register_buffer("margin", torch.zeros(len(input_dims)))
        if config.head == "semantic":
            make = lambda d, m: build_mapper(m, d, d_s)  # noqa: E731
        else:
            make = lambda d, m: nn.Linear(d, n_classes)  # noqa: E731
        self.mappers = nn.ModuleList(
            MapperBank([make(d, m) for m in config.mappers]) for d in self.input_dims
        )
        # Per-modality feature standardisation, fitted on training data (fit_input_stats):
        # user features come at any scale, and the checkpoint must carry the statistics.
        for m, d in enumerate(self.input_dims):
            self.register_buffer(f"in_mean_{m}", torch.zeros(d))
            self.register_buffer(f"in_std_{m}", torch.ones(d))
        # Geometry keeping: an aligned modality maps x -> x + g * f(x) with the gate g
        # starting at 0 (one per mapper), so training starts from the cosine rule.
        self.gates = nn.Parameter(torch.zeros(len(input_dims), len(config.mappers)), requires_grad=bool(self.aligned.any()))
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(config.logit_scale)), requires_grad=config.learn_scale
        )
        # Fitted after training from training data (router.fit_router) when config.router
        # is "gate"; a submodule, so the checkpoint's state_dict carries it.
        self.router: GateRouter | None = None

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As nn.Module's, and rebuilds the learned router first when the state carries one
        (its buffers' shapes depend on the training data, so no empty one can be made)."""
        if self.router is None and any(k.startswith("router.") for k in state_dict):
            state_dict = dict(state_dict)  # router_from_state fills in what older routers lack
            self.router = router_from_state(state_dict, "router.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def s_prune(self) -> torch.Tensor:
        """(M, N, N): the pruned similarity matrix S^m of every modality (eqs. 8-9).

        Computed from the config on use (an N x N top-k is cheap), so changing top_k or
        csmf_weights on a trained model, as the top-k sweep does, needs no retraining.
        """
        sim = class_similarity(self.class_emb)
        cfg = self.config
        return torch.stack(
            [pruned_similarity(sim, seen_m, cfg.top_k, cfg.csmf_weights, cfg.csmf_normalize) for seen_m in self.seen]
        )

    @torch.no_grad()
    def fit_input_stats(self, features: list[torch.Tensor]) -> None:
        """Standardise each modality with the mean and data.standard_scale of its training
        features (any float dtype)."""
        for m, x in enumerate(features):
            if len(x) > 1:
                mean, scale = standard_scale(x)
                getattr(self, f"in_mean_{m}").copy_(mean)
                getattr(self, f"in_std_{m}").copy_(scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def modality_logits(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """(B, d_m) -> (K, B, N): logits of modality m's K modules, before calibration.

        Under bf16 autocast the mappers run in bf16 and the cosine head in fp32: the scale
        (gamma^2 = 30) would magnify bf16's rounding of the cosines into the logits."""
        z = (x - getattr(self, f"in_mean_{m}")) / getattr(self, f"in_std_{m}")
        out = self.mappers[m](z)  # (K, B, d_s); (K, B, N) for the linear head
        if self.config.head == "linear":
            return out
        with torch.autocast(x.device.type, enabled=False):
            s_hat = out.float()
            if self.aligned[m]:
                s_hat = x + self.gates[m][:, None, None] * s_hat
            return osrs_logits(s_hat, self.class_emb, self.scale)

    @torch.no_grad()
    def mean_logits(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """(n, d_m) -> (n, N): modality_logits averaged over the K modules (raw, as eq. 6),
        in fp32 a float_blocks block at a time, so that x may be bf16 storage of any length."""
        blocks = [self.modality_logits(m, part).mean(0) for part in float_blocks(x)]
        return torch.cat(blocks) if blocks else self.class_emb.new_zeros(0, len(self.class_emb))

    def _present_logits(self, m: int, x: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """(K, B, N): modality_logits on the rows that show modality m (shown (B,)), 0 on the others."""
        rows = shown.nonzero()[:, 0]
        lk = self.modality_logits(m, x[rows]).float()
        return lk.new_zeros(lk.shape[0], len(x), lk.shape[2]).index_copy(1, rows, lk)

    def calibration_offset(self, present: torch.Tensor) -> torch.Tensor:
        """(M, B, N): calibrated stacking subtracts modality m's margin from its seen classes,
        on samples that show one modality only.

        With several modalities DMSS already decides which modality saw the class, and
        the margin would blur exactly the confidence it reads (measured on the default:
        routing 89% -> 26% when DMSS read calibrated logits).
        """
        single = (present.sum(0) == 1).float()  # (B,)
        if self.config.unimodal == "gate":
            single = torch.zeros_like(single)  # the gate decides seen vs unseen instead
        return (self.margin[:, None] * self.seen)[:, None, :] * single[None, :, None]

    def encode(self, features: list[torch.Tensor], gates: bool = True, present: torch.Tensor | None = None) -> Encoded:
        """The presence-independent part of the forward pass: every modality's K raw logits
        and, when `gates` and a router is fitted, its gate logits (absent rows: any values).

        Given `present` (B, M), a modality's mappers run on its present rows only and the
        absent rows' logits are 0: a training batch shows each sample in one modality, and
        computing the others' mappers on its zero rows doubled the work of two modalities."""
        if present is None:
            raw_k = torch.stack([self.modality_logits(m, x) for m, x in enumerate(features)]).float()
        else:
            raw_k = torch.stack([self._present_logits(m, x, present[:, m]) for m, x in enumerate(features)])
        raw = raw_k.mean(1)
        gate_logit = None
        if gates and self.router is not None:
            gate_logit = self.router.gate_logits(features, raw, self.seen)
        return Encoded(raw, raw_k, gate_logit)

    @torch.no_grad()
    def encode_for_scoring(self, features: list[torch.Tensor], chunk: int = SCORING_CHUNK) -> Encoded:
        """encode(features).for_scoring(): what fuse reads under any mask, the per-module
        logits kept only where missing="zero" needs them. `chunk` samples at a time, so that
        a test set of any size costs its encoding and one chunk's temporaries."""
        n, keep_k = len(features[0]), self.config.missing == "zero"
        parts = (self.encode([x[i:i + chunk] for x in features]).for_scoring(keep_k=keep_k)
                 for i in range(0, max(n, 1), chunk))
        return Encoded.concat(parts, n)

    def forward(
        self, features: list[torch.Tensor], present: torch.Tensor, fusion: str | None = None, router: str | None = None
    ) -> CSCFOutput:
        """features: one (B, d_m) tensor per modality (absent rows: any values);
        present: (B, M) bool. `fusion` and `router` override config.fusion and
        config.router (to evaluate ablations with one set of trained weights)."""
        return self.fuse(self.encode(features, gates=(router or self.config.router) == "gate"), present, fusion, router)

    def fuse(
        self, enc: Encoded, present: torch.Tensor, fusion: str | None = None, router: str | None = None
    ) -> CSCFOutput:
        """The rest of the forward pass on encoded samples: calibration, routing and fusion
        under the presence mask (B, M). Scoring one test set under many masks and ablations
        encodes it once and fuses it many times (tasks.evaluation.scoring)."""
        present = present.T  # (M, B)
        shown = present
        offset = self.calibration_offset(present)
        raw, raw_k = enc.raw, enc.raw_k
        posterior = self.route(enc, shown, router or self.config.router)
        if self.config.missing == "zero":  # absent modalities read a zero vector and take part
            if raw_k is None:
                raise ValueError('missing="zero" fuses from per-module logits: encode without for_scoring')
            raw_k = torch.where(present[:, None, :, None], raw_k, self._zero_input_logits())
            raw, present = raw_k.mean(1), torch.ones_like(present)
            u = dmss_uncertainty(raw_k - offset[:, None], present) if posterior is None else None
        elif posterior is None:
            # DMSS of the raw logits: they differ from the calibrated ones only on samples
            # showing one modality, whose u is 2 (both shares 1) whatever the entropies.
            u = dmss_from_entropies(*enc.dmss_entropies(), present)
        logits = raw - offset  # (M, B, N)
        if posterior is not None:
            p_seen = posterior @ seen_patterns(self.seen)[0].float()  # (B, M): P(m saw the class)
            u = torch.where(shown, 1 - p_seen.T, torch.full_like(p_seen.T, math.inf))
        fusion = fusion or self.config.fusion
        if fusion == "gate" and posterior is None and self.training:
            fusion = "mean"  # training before the router exists: the loss reads the logits only
        if fusion == "mean":
            w = present.float()[..., None]
            fused = (logits * w).sum(0) / w.sum(0).clamp_min(1)
            dominant = u.argmin(0)
        elif fusion == "gate":
            fused, dominant = self.gate_fuse(raw, shown, posterior, self.config.gate_mix, enc.gate_logit), u.argmin(0)
        elif fusion == "dominant":
            fused, dominant = csmf_fuse(logits, u, present, self.s_prune, False, 0.0)
        else:
            fused, dominant = csmf_fuse(
                logits, u, present, self.s_prune, self.config.csmf_normalize, self.config.csmf_weight
            )
        if posterior is not None:  # one modality shown: calibrated stacking, or the gate's own mixture
            single = shown.sum(0) == 1
            if self.config.unimodal == "gate":
                alone = self.gate_fuse(raw, shown, posterior, "soft")
            else:
                alone = (logits * shown[..., None]).sum(0)
            fused = torch.where(single[:, None], alone, fused)
        if posterior is None:  # the learned router's posterior already weighs "seen by no modality"
            fused = fused - self.unseen_by_all_offset(shown, dominant)
        return CSCFOutput(raw_k, offset, logits, u, dominant, fused)

    def unseen_by_all_offset(self, present: torch.Tensor, dominant: torch.Tensor) -> torch.Tensor:
        """(B, N): on samples that show several modalities, calibrated stacking for the classes
        no modality saw (classes added by name at prediction time): every class some modality
        saw loses the dominant modality's margin.

        Without such classes there is nothing to calibrate against and the offset is 0.
        Measured on pydocs (seed 0, three classes added by name): bimodal samples of the
        added classes 12.2% -> 31.9% right, trained classes 83.3 -> 80.9.
        """
        seen_by_any = self.seen.any(0)  # (N,)
        if seen_by_any.all():
            return torch.zeros(len(dominant), len(seen_by_any), device=dominant.device)
        several = (present.sum(0) > 1).float()  # (B,)
        return (self.margin[dominant] * several)[:, None] * seen_by_any.float()[None, :]

    def route(self, enc: Encoded, present: torch.Tensor, router: str) -> torch.Tensor | None:
        """The learned router's P(pattern | x) (B, P), or None under DMSS. present (M, B).

        A model configured with the gate router but not yet given one (while training,
        whose loss reads only the logits) falls back to DMSS; predicting without one is
        an error.
        """
        if router == "dmss":
            return None
        if self.router is None:
            if self.training:
                return None
            raise ValueError('router="gate" needs a fitted router: set model.router (router.fit_router) first')
        if enc.gate_logit is None:
            raise ValueError('router="gate" needs gate logits: encode with gates=True')
        return self.router.posterior(enc.gate_logit, present, self.seen)

    def _zero_input_logits(self) -> torch.Tensor:
        """(M, K, 1, N): raw logits of an all-zero input, what missing="zero" feeds an absent modality."""
        zeros = [self.class_emb.new_zeros(1, d) for d in self.input_dims]
        return torch.stack([self.modality_logits(m, x) for m, x in enumerate(zeros)]).float()

    def gate_fuse(
        self, raw: torch.Tensor, present: torch.Tensor, posterior: torch.Tensor | None, mix: str,
        gate_logit: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fused logits (B, N) from the learned router: "product" is router.expert_product of the
        gates (M, B) `gate_logit` and the modalities' own distributions; "prior" adds
        log P(pattern of c | x) to the mean of the present modalities' logits; "soft"/"hard"
        are log router.routed_probs."""
        if posterior is None or self.router is None:
            raise ValueError('fusion="gate" needs router="gate" with a fitted router')
        if mix == "product":
            if gate_logit is None:
                raise ValueError('gate_mix="product" needs the gate logits: encode with gates=True')
            r = self.router
            return expert_product(raw, present, self.seen, gate_logit, r.base_rate, r.weight, self.aligned, r.temperature)
        if mix == "prior":
            return present_mean(raw, present) + posterior.clamp_min(1e-12).log()[:, seen_patterns(self.seen)[1]]
        return routed_probs(raw, present, self.seen, posterior, hard=mix == "hard").clamp_min(1e-12).log()

    def loss(self, out: CSCFOutput, labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Eq. 10: sum over modalities of (1/K sum_i CE(p_i, y) + CE(p, y)).

        Each training sample is present in the modality that recorded it, so each
        modality's terms average over its own samples only. With loss_classes="seen" the
        softmax runs over the modality's seen classes only.
        """
        total = out.fused.new_zeros(())
        for m in range(len(self.input_dims)):
            rows = present[:, m]
            if not rows.any():
                continue
            lk, y = out.logits_k[m][:, rows], labels[rows]  # (K, b, N), (b,)
            if self.config.loss_classes == "seen":
                lk = lk.masked_fill(~self.seen[m], -1e4)
            k = lk.shape[0]
            per_module = F.cross_entropy(lk.reshape(-1, lk.shape[-1]), y.repeat(k))
            total = total + per_module + F.cross_entropy(lk.mean(0), y)
        return total
