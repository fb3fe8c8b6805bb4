"""Choices made on labelled validation samples (`cscf run --validation FILE`, CONTRACTS section 2).

Without validation data, training settles four things by default or on training data
alone: how far each gate of the learned router is trusted (router.out_of_fold_scaling, on
pseudo-unseen training classes), the fusion (the router's own, method CSCF = B+O+R), CSMF's
top-k, and each modality's calibration margin (calibration.py, on pseudo-unseen training
classes). Given labelled samples held out from training, they are chosen on those instead:

- gate scaling (gate_scaling): each modality's gate logit Platt-scaled on the validation
  samples that show the modality, labelled by whether it saw their class. Training data can
  only hold out a few of a modality's own classes as "unseen"; validation samples are of the
  classes it really never saw. Adopted when, fitted on one half of the samples and scored on
  the other (both ways), it raises the accuracy of the model's own fusion on the samples
  showing several modalities; the fusion below is then chosen with the scaled gates;
- fusion, gate_mix and top-k: the router's fusion ("gate", B+O+R) under each way of mixing
  the gates of GATE_MIXES (router.expert_product, or the pattern posterior added to the mean
  logits: measured on the development datasets, each wins on some) or CSMF with the router
  naming the dominant modality ("csmf", B+O+R+C) at each top-k of TOP_K_GRID, by accuracy
  on the samples that show two or more modalities (the only ones a fusion decides);
- margin, per modality: SeenUnseenCurve.best_margin, under the model's own criterion and
  seen-accuracy limit as calibration.margin_rule applies them to that modality, of that modality alone on every sample that shows it, when those
  include classes it saw and classes it did not (else there is no trade-off to judge, and
  the margin from training data stays).

A margin acts only on samples that show one modality (CSCF.calibration_offset), a fusion
only on those that show several, so the choices do not interact. A tie keeps the model as
trained: validation data replaces a setting only when it says the change is better.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch

from .calibration import SeenUnseenCurve, harmonic_mean, margin_rule
from .cscf import CSCF, Encoded
from .router import fit_logistic

TOP_K_GRID = (1, 2, 3, 5, 10)
GATE_MIXES = ("product", "prior")
_TIE = 1e-6  # percentage points: closer than this is a tie (as SeenUnseenCurve.best_margin)


@dataclass(frozen=True)
class FusionScore:
    """One candidate fusion and its accuracy on the validation samples showing several modalities."""

    fusion: str  # "gate" (B+O+R) or "csmf" (B+O+R+C); the model's own when it is neither
    top_k: int | None  # CSMF's top-k; None for a fusion that does not read it
    gate_mix: str | None  # how "gate" mixes the gates (ModelConfig.gate_mix); None for other fusions
    accuracy: float | None  # percent; None without such samples


@dataclass(frozen=True)
class MarginScore:
    """One modality's margin: from training data, chosen, and both judged on validation samples."""

    trained: float  # chosen on training data (calibration.choose_margins)
    chosen: float
    from_validation: bool  # False: the training margin stayed (a tie, or nothing to judge by)
    seen_samples: int  # validation samples showing the modality, of classes it saw
    unseen_samples: int  # ... of classes it did not see
    at_trained: tuple[float, float] | None  # (seen, unseen) accuracy in percent; None without both kinds
    at_chosen: tuple[float, float] | None


@dataclass(frozen=True)
class GateScaling:
    """The gates' logits Platt-scaled on validation samples (logit -> slope * logit + shift, per
    modality) and the model's own fusion with and without, cross-validated on the samples that
    show several modalities."""

    slopes: list[float]  # per modality, in model order; (1, 0) where a modality was not fitted
    shifts: list[float]
    seen_samples: list[int]  # per modality: validation samples showing it, of classes it saw
    unseen_samples: list[int]  # ... of classes it did not see (both are needed to fit it)
    accuracy_as_trained: float | None  # percent, on the same samples; None without them
    accuracy_scaled: float | None
    adopted: bool


@dataclass(frozen=True)
class Selection:
    """What `select_on_validation` chose, with the score of every candidate."""

    gate_scaling: GateScaling
    fusion: str
    top_k: int
    gate_mix: str
    margins: list[float]  # per modality, in model order
    multimodal_samples: int  # validation samples the fusion was judged on
    fusion_scores: list[FusionScore]  # the model as trained first
    margin_scores: list[MarginScore]  # per modality


@torch.no_grad()
def select_on_validation(
    model: CSCF, encoded: Encoded, present: torch.Tensor, labels: torch.Tensor, top_ks: Sequence[int] = TOP_K_GRID,
    gate_mixes: Sequence[str] = GATE_MIXES, scale_gates: bool = True,
) -> Selection:
    """Choose the gates' scaling, the fusion, its gate_mix, CSMF's top-k and every margin of a trained
    CSCF with its learned router on validation samples: `encoded` by CSCF.encode (or
    encode_for_scoring) of their features, present (B, M) bool the modalities each shows, labels
    (B,) class indices. scale_gates=False keeps the gates as trained whatever the samples say
    (what the development benchmark compares the scaling against)."""
    if model.config.router != "gate" or model.router is None:
        raise ValueError('choosing on validation data needs a CSCF with its fitted learned router (router="gate")')
    multi = (present.sum(1) >= 2).nonzero().squeeze(1)
    gates = gate_scaling(model, encoded, present, labels)
    if not scale_gates:
        gates = replace(gates, adopted=False)
    if gates.adopted:
        encoded = scaled_gates(encoded, gates.slopes, gates.shifts)
    on_multi = encoded.rows(multi), present[multi], labels[multi]
    scores = [FusionScore(fusion, top_k, mix, _fusion_accuracy(model, *on_multi, fusion, top_k, mix))
              for fusion, top_k, mix in _fusion_candidates(model, top_ks, gate_mixes)]
    best = _first_best(scores)
    margins = [_margin_score(model, m, encoded.raw[m][present[:, m]], labels[present[:, m]])
               for m in range(present.shape[1])]
    return Selection(gates, best.fusion, best.top_k or model.config.top_k, best.gate_mix or model.config.gate_mix,
                     [s.chosen for s in margins], len(multi), scores, margins)


def apply_selection(model: CSCF, selection: Selection) -> None:
    """Give `model` the chosen settings: its gates' scaling when adopted, its config's fusion,
    top_k and gate_mix, and its margins."""
    if selection.gate_scaling.adopted:
        model.router.rescale(selection.gate_scaling.slopes, selection.gate_scaling.shifts)
    model.config = model.config.replace(fusion=selection.fusion, top_k=selection.top_k, gate_mix=selection.gate_mix)
    model.margin.copy_(torch.tensor(selection.margins))


def gate_scaling(model: CSCF, encoded: Encoded, present: torch.Tensor, labels: torch.Tensor) -> GateScaling:
    """Platt scaling of every gate on all the validation samples, and whether it helps: the
    same fitted on one half of the samples (alternate samples of each class) and scored on the
    other, both ways, against the gates as trained, by the accuracy of the model's own fusion
    on the samples that show several modalities. Adopted only when strictly better."""
    slopes, shifts, n_seen, n_unseen = platt_scaling(model, encoded.gate_logit, present, labels)
    half = alternate_halves(labels)
    multi = present.sum(1) >= 2
    correct_as_trained = correct_scaled = 0.0
    for fit in (half, ~half):
        rows = (~fit & multi).nonzero().squeeze(1)
        if not len(rows):
            continue
        fitted_slopes, fitted_shifts, _, _ = platt_scaling(model, encoded.gate_logit[:, fit], present[fit], labels[fit])
        held_out = encoded.rows(rows)
        correct_as_trained += len(rows) * _own_fusion_accuracy(model, held_out, present[rows], labels[rows])
        correct_scaled += len(rows) * _own_fusion_accuracy(
            model, scaled_gates(held_out, fitted_slopes, fitted_shifts), present[rows], labels[rows])
    n_multi = int(multi.sum())
    if not n_multi:
        return GateScaling(slopes, shifts, n_seen, n_unseen, None, None, False)
    as_trained, scaled = correct_as_trained / n_multi, correct_scaled / n_multi
    return GateScaling(slopes, shifts, n_seen, n_unseen, as_trained, scaled, scaled > as_trained + _TIE)


def scaled_gates(encoded: Encoded, slopes: list[float], shifts: list[float]) -> Encoded:
    """`encoded` with its gate logits scaled (scaled_logits)."""
    return Encoded(encoded.raw, encoded.raw_k, scaled_logits(encoded.gate_logit, slopes, shifts), encoded.entropies)


def scaled_logits(gate_logit: torch.Tensor, slopes: list[float], shifts: list[float]) -> torch.Tensor:
    """(M, B) gate logits, row m replaced by slopes[m] * logit + shifts[m]."""
    return gate_logit * torch.tensor(slopes)[:, None] + torch.tensor(shifts)[:, None]


def platt_scaling(
    model: CSCF, gate_logit: torch.Tensor, present: torch.Tensor, labels: torch.Tensor
) -> tuple[list[float], list[float], list[int], list[int]]:
    """Per modality m, (slope, shift) such that sigmoid(slope * logit + shift) is P(m saw the
    class) on the samples that show m at the base rate its gate was fitted at (router's pi_m,
    which expert_product and pattern_posterior read), and how many of those samples are of
    classes m saw and did not see. (1, 0) without both kinds. The slope is kept >= 0: a gate
    that reads backwards on validation data loses its evidence, it is not turned around."""
    slopes, shifts, n_seen, n_unseen = [], [], [], []
    for m, (logit, shown) in enumerate(zip(gate_logit, present.T)):
        saw = model.seen[m][labels[shown]].float()
        n_seen.append(int(saw.sum()))
        n_unseen.append(len(saw) - n_seen[-1])
        if not n_seen[-1] or not n_unseen[-1]:
            slopes.append(1.0)
            shifts.append(0.0)
            continue
        rate = saw.mean()
        a, b = fit_logistic(logit[shown][:, None], saw).tolist()
        if a < 0:
            a, b = 0.0, float(torch.logit(rate))
        slopes.append(a)
        shifts.append(b - float(torch.logit(rate)) + float(torch.logit(model.router.base_rate[m])))
    return slopes, shifts, n_seen, n_unseen


def alternate_halves(labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every other sample of each class, in their order."""
    order = labels.argsort(stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    first = torch.searchsorted(labels[order], labels)  # where each sample's class starts in the sorted order
    return (rank - first) % 2 == 0


def _own_fusion_accuracy(model: CSCF, encoded: Encoded, present: torch.Tensor, labels: torch.Tensor) -> float:
    """_fusion_accuracy of the model's own fusion, top-k and gate mix on samples that exist."""
    return _fusion_accuracy(model, encoded, present, labels, model.config.fusion, None, None) or 0.0


def _fusion_candidates(
    model: CSCF, top_ks: Sequence[int], gate_mixes: Sequence[str]
) -> list[tuple[str, int | None, str | None]]:
    """(fusion, top_k, gate_mix) triples: the model as trained first, then "gate" under every
    gate mix, then "csmf" at every top-k of the grid capped by the class count (a larger k
    keeps the same classes)."""
    config, n_classes = model.config, model.class_emb.shape[0]
    own = (config.fusion, config.top_k if config.fusion == "csmf" else None,
           config.gate_mix if config.fusion == "gate" else None)
    candidates = [own] + [("gate", None, mix) for mix in gate_mixes]
    candidates += [("csmf", k, None) for k in sorted({min(k, n_classes) for k in top_ks})]
    return list(dict.fromkeys(candidates))


def _fusion_accuracy(
    model: CSCF, encoded: Encoded, present: torch.Tensor, labels: torch.Tensor, fusion: str, top_k: int | None,
    gate_mix: str | None,
) -> float | None:
    """Top-1 accuracy (percent) of `fusion` at `top_k` (and `gate_mix`) with the learned router;
    None without samples."""
    if not len(labels):
        return None
    with _configured(model, top_k=top_k or model.config.top_k, gate_mix=gate_mix or model.config.gate_mix):
        fused = model.fuse(encoded, present, fusion=fusion, router="gate").fused
    return 100.0 * float((fused.argmax(-1) == labels).float().mean())


@contextmanager
def _configured(model: CSCF, **settings: object) -> Iterator[None]:
    """`model` with config settings changed for a while: CSCF.s_prune reads top_k and
    CSCF.fuse reads gate_mix from the config on use."""
    config = model.config
    model.config = config.replace(**settings)
    try:
        yield
    finally:
        model.config = config


def _first_best(scores: list[FusionScore]) -> FusionScore:
    """The first candidate within _TIE of the best accuracy: the model as trained on a tie
    (it comes first); the first of the scores when none has an accuracy."""
    best = max((s.accuracy for s in scores if s.accuracy is not None), default=None)
    if best is None:
        return scores[0]
    return next(s for s in scores if s.accuracy is not None and s.accuracy >= best - _TIE)


def _margin_score(model: CSCF, m: int, logits: torch.Tensor, labels: torch.Tensor) -> MarginScore:
    """Modality m's margin on its raw logits (n, N) over the validation samples that show it."""
    config, trained = model.config, float(model.margin[m])
    curve = SeenUnseenCurve.from_logits(logits, labels, model.seen[m])
    n_seen, n_unseen = len(curve.seen.gap), len(curve.unseen.gap)
    if config.calibration != "stacking" or not n_seen or not n_unseen:
        return MarginScore(trained, trained, False, n_seen, n_unseen, None, None)
    criterion, max_seen_drop = margin_rule(config.calibration_criterion, config.calibration_max_seen_drop,
                                           bool(model.aligned[m]))
    best = curve.best_margin(criterion, max_seen_drop)
    keep = _allowed(curve, trained, max_seen_drop) and \
        _score(curve, trained, criterion) >= _score(curve, best, criterion) - _TIE
    chosen = trained if keep else best
    return MarginScore(trained, chosen, not keep, n_seen, n_unseen, curve.at(trained), curve.at(chosen))


def _score(curve: SeenUnseenCurve, margin: float, criterion: str) -> float:
    """What best_margin maximises, at one margin: the harmonic or arithmetic mean of the
    seen and unseen accuracies."""
    seen, unseen = curve.at(margin)
    if criterion == "harmonic":
        return float(harmonic_mean(torch.tensor(seen), torch.tensor(unseen)))
    return (seen + unseen) / 2


def _allowed(curve: SeenUnseenCurve, margin: float, max_seen_drop: float | None) -> bool:
    """Whether `margin` costs at most `max_seen_drop` points of seen accuracy against margin 0,
    the limit best_margin chooses under."""
    return max_seen_drop is None or curve.at(margin)[0] >= curve.at(0.0)[0] - max_seen_drop
