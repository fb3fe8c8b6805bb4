"""Seen/unseen calibration of one modality (issue 6; the paper's challenge 1).

A modality trained on its seen classes scores them higher than the classes it never
saw, even for samples of those unseen classes. Calibrated stacking (Chao et al., 2016)
subtracts a margin from the seen classes' logits; sweeping the margin traces the
seen/unseen accuracy curve whose area is AUSUC. In MMHCL every modality knows its
unseen classes exactly (the other modalities' seen classes), so the curve is defined
per modality.

The margin is chosen on training data only: some of the modality's seen classes are
held out as *pseudo-unseen*, a model is trained without them, and the margin that
best balances held-out samples of the remaining seen classes against the pseudo-unseen
ones is kept (the usual generalized zero-shot validation protocol).

A second, training-side remedy lives here too: a modality whose features already share
the class-semantic space (CLIP image vs CLIP text, or text vs MiniLM) is detected by the
training-free cosine rule, and CSCF then maps it as x + f(x) with f starting at zero,
so training starts from the transfer the features already have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .data import ROWS, TrainData, float_blocks
from .trainer import TrainConfig, stage_seed, train

# A modality is "text-aligned" when the cosine rule on its training data is this many
# times better than chance; random or merely same-width features stay near 1x.
ALIGNED_OVER_CHANCE = 3.0


@dataclass
class Gaps:
    """What a margin can change, per sample: the best seen-class logit minus the best
    unseen-class logit, and whether each of the two best classes is the true one.

    With margin t subtracted from seen-class logits a sample is predicted as its best
    seen class when gap > t, else as its best unseen class.
    """

    gap: torch.Tensor  # (n,)
    right_if_seen: torch.Tensor  # (n,) bool
    right_if_unseen: torch.Tensor  # (n,) bool

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor) -> "Gaps":
        """logits (n, N), labels (n,), seen (N,) bool: the modality's seen classes. ROWS
        samples at a time: the masked copies of all of a 13x test set's logits would be GBs."""
        gap, if_seen, if_unseen = [], [], []
        for part, y in zip(logits.split(ROWS), labels.split(ROWS)):
            best_seen = part.masked_fill(~seen, -torch.inf).max(-1)
            best_unseen = part.masked_fill(seen, -torch.inf).max(-1)
            gap.append(best_seen.values - best_unseen.values)
            if_seen.append(best_seen.indices == y)
            if_unseen.append(best_unseen.indices == y)
        return cls(torch.cat(gap), torch.cat(if_seen), torch.cat(if_unseen))

    def select(self, rows: torch.Tensor) -> "Gaps":
        """The samples under `rows` (a bool mask or indices)."""
        return Gaps(self.gap[rows], self.right_if_seen[rows], self.right_if_unseen[rows])

    def accuracy(self, margins: torch.Tensor) -> torch.Tensor:
        """Top-1 accuracy in percent at each margin (P,) -> (P,); NaN without samples.

        Exact, via sorting: the samples with gap <= t are those predicted unseen.
        """
        if len(self.gap) == 0:
            return torch.full_like(margins, float("nan"), dtype=torch.float32)
        order = self.gap.argsort()
        gap = self.gap[order]
        zero = torch.zeros(1)
        unseen_right = torch.cat([zero, self.right_if_unseen[order].float().cumsum(0)])
        seen_right = torch.cat([zero, self.right_if_seen[order].float().cumsum(0)])
        n_unseen = torch.searchsorted(gap, margins.to(gap.dtype), right=True)
        right = unseen_right[n_unseen] + (seen_right[-1] - seen_right[n_unseen])
        return 100.0 * right / len(gap)


def harmonic_mean(seen_acc: torch.Tensor, unseen_acc: torch.Tensor) -> torch.Tensor:
    """Harmonic mean of seen and unseen accuracy: high only when both are (0 when both are 0)."""
    s, u = seen_acc, unseen_acc
    return torch.where(s + u > 0, 2 * s * u / (s + u).clamp_min(1e-12), torch.zeros_like(s))


@dataclass
class SeenUnseenCurve:
    """Accuracy on seen-class and on unseen-class samples as the margin moves."""

    seen: Gaps  # samples of the modality's seen classes
    unseen: Gaps  # samples of its unseen classes
    margins: torch.Tensor  # (P,) increasing
    seen_acc: torch.Tensor  # (P,) percent, decreasing
    unseen_acc: torch.Tensor  # (P,) percent, increasing

    @classmethod
    def of(cls, seen: Gaps, unseen: Gaps) -> "SeenUnseenCurve":
        """Every margin at which a prediction changes (midpoints), both extremes, and 0."""
        gaps = torch.cat([seen.gap, unseen.gap]).unique()
        mids = (gaps[1:] + gaps[:-1]) / 2
        margins = torch.cat([gaps[:1] - 1, mids, gaps[-1:] + 1, torch.zeros(1)]).unique()
        return cls(seen, unseen, margins, seen.accuracy(margins), unseen.accuracy(margins))

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor, rows: torch.Tensor | None = None
    ) -> "SeenUnseenCurve":
        """One modality's curve from its logits (n, N) on samples of any class; seen (N,) bool;
        `rows` (n,) bool: the samples it is drawn from (None: all), selected without copying logits."""
        gaps = Gaps.of(logits, labels, seen)
        own = seen[labels]
        if rows is not None:
            gaps, own = gaps.select(rows), own[rows]
        return cls.of(gaps.select(own), gaps.select(~own))

    def at(self, margin: float) -> tuple[float, float]:
        """(seen, unseen) accuracy in percent with `margin` subtracted from seen-class logits."""
        t = torch.tensor([margin])
        return float(self.seen.accuracy(t)[0]), float(self.unseen.accuracy(t)[0])

    @property
    def harmonic(self) -> torch.Tensor:
        """(P,) harmonic mean of seen and unseen accuracy along the curve."""
        return harmonic_mean(self.seen_acc, self.unseen_acc)

    def ausuc(self) -> float:
        """Area under the seen (y) vs unseen (x) accuracy curve, in percent of the unit square."""
        x, y = self.unseen_acc / 100, self.seen_acc / 100
        x = torch.cat([torch.zeros(1), x, x[-1:]])  # close the curve onto both axes
        y = torch.cat([y[:1], y, torch.zeros(1)])
        return 100.0 * float(torch.trapezoid(y, x))

    def best_margin(self, criterion: str, max_seen_drop: float | None = None) -> float:
        """The margin maximising `criterion`: "harmonic" (both must be high) or "mean"
        (the arithmetic mean, what acc_mix weighs: A_s and A_u count equally), among the
        margins that cost seen-class accuracy at most `max_seen_drop` points against
        margin 0 (None: no limit).

        Among tied margins the one closest to 0 wins: calibrate no more than needed, and
        with no samples to judge by (accuracies NaN) that is 0.
        """
        score = {"harmonic": self.harmonic, "mean": (self.seen_acc + self.unseen_acc) / 2}[criterion]
        score = torch.nan_to_num(score, nan=-1.0)
        if max_seen_drop is not None:
            at_zero = self.seen_acc[self.margins == 0]
            score = score.masked_fill(self.seen_acc < at_zero - max_seen_drop, -1.0)
        best = score.max()
        tied = self.margins[score >= best - 1e-6]
        return float(tied[tied.abs().argmin()])


# ----------------------------------------------------------------------------- training data only


def pseudo_unseen_split(
    data: TrainData, seen: torch.Tensor, holdout: float, val_share: float, seed: int
) -> tuple[TrainData, torch.Tensor, TrainData]:
    """Split each modality's training data for choosing its margin.

    A share `holdout` of the modality's seen classes becomes pseudo-unseen (all their
    samples go to validation); of the remaining classes a share `val_share` of samples
    is held out too. Returns (fit data, pseudo-seen mask (M, N), validation data).
    """
    g = torch.Generator().manual_seed(seed)
    fit_x, fit_y, val_x, val_y, pseudo = [], [], [], [], seen.clone()
    for m, (x, y) in enumerate(zip(data.features, data.labels)):
        classes = y.unique()
        n_out = min(max(1, round(holdout * len(classes))), len(classes) - 1)
        if n_out < 1:
            raise ValueError(f"modality {m} saw {len(classes)} class(es): a margin needs at least 2 to choose on")
        held = classes[torch.randperm(len(classes), generator=g)[:n_out]]
        pseudo[m, held] = False
        to_val = torch.isin(y, held) | (torch.rand(len(y), generator=g) < val_share)
        fit_x.append(x[~to_val])
        fit_y.append(y[~to_val])
        val_x.append(x[to_val])
        val_y.append(y[to_val])
    return TrainData(fit_x, fit_y), pseudo, TrainData(val_x, val_y)


# The calibration rules a run can choose (`cscf run --calibration`) and the criterion each
# sets; margin_rule says how a criterion applies to each modality.
MARGIN_RULES = {"harmonic": "harmonic", "seen-budget": "mean"}


def margin_rule(criterion: str, max_seen_drop: float | None, aligned: bool) -> tuple[str, float | None]:
    """The criterion and seen-accuracy limit one modality's margin is chosen by.

    "harmonic" (the generalized zero-shot habit) applies, without a limit, to a modality
    aligned with the class semantics: it can name classes it never saw (the cosine rule
    shows it), and the harmonic mean buys that. A modality that is not aligned names almost
    none, and the harmonic mean would still trade its seen accuracy for the few it does
    (measured on the embedded default's audio: seen 88-96% -> 31-63% for unseen 1-5% -> 14-20%),
    so it keeps "mean" within `max_seen_drop`, as does every modality under "mean".
    """
    if criterion == "harmonic" and aligned:
        return "harmonic", None
    return "mean", max_seen_drop


@torch.no_grad()
def choose_margins(
    model: torch.nn.Module, val: TrainData, pseudo_seen: torch.Tensor, criterion: str, max_seen_drop: float | None,
    aligned: torch.Tensor,
) -> list[float]:
    """Per modality, the margin that margin_rule(criterion, max_seen_drop, aligned[m]) prefers
    on validation data of a model trained on the pseudo-seen classes."""
    margins = []
    for m, (x, y) in enumerate(zip(val.features, val.labels)):
        logits = model.mean_logits(m, x)  # raw, uncalibrated (K mean as in eq. 6)
        curve = SeenUnseenCurve.from_logits(logits, y, pseudo_seen[m])
        margins.append(curve.best_margin(*margin_rule(criterion, max_seen_drop, bool(aligned[m]))))
    return margins


@dataclass
class PseudoUnseen:
    """A copy of the method trained with some seen classes held out as pseudo-unseen, and
    the data it was fitted and is judged on: what calibration (the margins) and the learned
    router (router.fit_router_from_model) both learn "a class this modality never saw" from."""

    model: torch.nn.Module
    fit: TrainData
    val: TrainData
    pseudo_seen: torch.Tensor  # (M, N)


def train_pseudo_unseen(
    make_model: Callable[[torch.Tensor], torch.nn.Module],
    data: TrainData,
    seen: torch.Tensor,
    train_cfg: TrainConfig,
    holdout: float,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> PseudoUnseen:
    """Train make_model(pseudo_seen) on the pseudo-seen split of the training data.

    make_model(seen) builds an untrained model of the method for a given seen mask. Its
    initial weights come from a seed derived from the run's seed, not from whatever global
    RNG state the main training left (which differs when that training was resumed), and
    its training resumes from `resume` and reports each epoch like `train`.
    """
    fit, pseudo_seen, val = pseudo_unseen_split(data, seen, holdout, 0.2, train_cfg.seed)
    torch.manual_seed(stage_seed(train_cfg.seed, "calibration"))
    model, _ = train(make_model(pseudo_seen), fit, train_cfg, resume=resume, on_epoch_end=on_epoch_end)
    return PseudoUnseen(model, fit, val, pseudo_seen)


def fit_margins(
    make_model: Callable[[torch.Tensor], torch.nn.Module],
    data: TrainData,
    seen: torch.Tensor,
    train_cfg: TrainConfig,
    holdout: float,
    criterion: str,
    max_seen_drop: float | None,
    aligned: torch.Tensor,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> list[float]:
    """Calibrated stacking's margins, one per modality, from training data alone: the
    margins choose_margins prefers on the held-out data of a `train_pseudo_unseen` model."""
    pseudo = train_pseudo_unseen(make_model, data, seen, train_cfg, holdout, resume, on_epoch_end)
    return choose_margins(pseudo.model, pseudo.val, pseudo.pseudo_seen, criterion, max_seen_drop, aligned)


def cosine_rule_accuracy(features: torch.Tensor, labels: torch.Tensor, class_emb: torch.Tensor) -> float:
    """Top-1 accuracy (percent) of the training-free rule argmax_i cos(x, c_i) over all classes."""
    if features.shape[1] != class_emb.shape[1] or len(labels) == 0:
        return 0.0
    c = F.normalize(class_emb.float(), dim=-1)
    pred = torch.cat([(F.normalize(x, dim=-1) @ c.T).argmax(-1) for x in float_blocks(features)])
    return 100.0 * float((pred == labels).float().mean())


def text_aligned(data: TrainData, class_emb: torch.Tensor) -> torch.Tensor:
    """(M,) bool: modalities whose features already live in the class-semantic space,
    judged on training data by the cosine rule beating chance ALIGNED_OVER_CHANCE times."""
    chance = 100.0 / class_emb.shape[0]
    return torch.tensor(
        [cosine_rule_accuracy(x, y, class_emb) > ALIGNED_OVER_CHANCE * chance for x, y in zip(data.features, data.labels)]
    )
