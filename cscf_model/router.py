"""A router learned from training data (issue 12): which modalities saw the sample's class?

DMSS (section 3.2) guesses the dominant modality from the entropies of the modalities'
predictions. Under MMHCL the training data answers the question directly: modality m
knows its seen classes S_m, and holding some of them out as pseudo-unseen gives labelled
examples of "a class m never saw", from training data only (the COSMO gate, Atzmon &
Chechik 2019, fitted per modality).

Gate (per modality m): g_m(x) = P(class of x in S_m | x_m), a logistic regression on
  - two distances in m's standardised input space, both small for samples of classes m
    saw: the Mahalanobis distance to the nearest seen-class mean (shared covariance,
    shrunk towards a scaled identity so it is invertible with fewer samples than
    dimensions) and the mean Euclidean distance to the k nearest training samples (among
    at most BANK_SIZE of them, the same number per class) over those samples' own k-NN
    distance (local_density_ratio: a simplified local outlier factor);
  - optionally the model's best seen-class logit and its gap to the best unseen one,
    read from the pseudo-unseen model calibrated stacking trains (fit_router_with_logits).
It is fitted on held-out samples of pseudo-seen classes (label 1) and of pseudo-unseen
classes (label 0) against the statistics of the pseudo-seen classes only; at test time
the statistics of all seen classes are used. A gate fitted on several class hold-outs is
then scaled to how right it is on hold-outs it was not fitted on (out_of_fold_scaling),
which is how a modality whose gate separates seen from unseen classes poorly comes to
weigh less in the combination below.

Combination (M modalities, any seen pattern): each class c has a pattern sigma(c), the
set of modalities that saw it (possibly empty). Treating the modalities' evidence as
conditionally independent given sigma, Bayes' rule gives

    P(sigma | x) ∝ prior(sigma) * prod_{m present} r_m(sigma, x)^w_m,
    r_m = g_m / pi_m            if m in sigma
        = (1 - g_m) / (1 - pi_m) otherwise,

where pi_m is the share of label-1 samples the gate was fitted on (g_m / pi_m is the
gate's likelihood ratio: its posterior over its own training prior), prior(sigma) the
share of classes with pattern sigma, and w_m a per-modality evidence weight (1 = trust
the calibrated gate as is; training data has no multimodal samples to fit it on).

Fusion (CSCF.gate_fuse), with l the mean of the present modalities' logits and l_sigma
that mean over the present modalities in sigma (all present ones when none is):
  "product": log p(y | x) = sum_m w_m log q_m(y), every modality's own distribution over
            all classes from its gate and its temperature-scaled logits (expert_product).
            The default: chosen on validation splits of three real datasets with three and
            four modalities and overlapping seen sets (docs/results/development/), where the
            posterior over patterns below lets two modalities that wrongly claim a class
            outvote the one that saw it, although the classifiers disagree;
  "prior":  logit(y) = l(y) + log P(sigma(y) | x)   (the gate's posterior as a class prior
            on the averaged experts; the default before, best on two disjoint modalities);
  "soft":   p(y) = sum_sigma P(sigma | x) softmax_{c: sigma(c) = sigma}(l_sigma)_y  (COSMO);
  "hard":   the same with all weight on the most probable sigma.
With one modality present "soft" is COSMO's gate: its seen-class softmax and its
unseen-class softmax mixed by g_m. Whatever the fusion, P(sigma | x) names the modality
most likely to have seen the class (CSCF's dominant modality and routing accuracy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import Matrix, TrainData, float_blocks, matrix_shape, standard_scale

_EPS = 1e-6
# Fewest pseudo-unseen classes a gate on logit features is fitted from (fit_router_with_logits).
MIN_HELD_OUT_FOR_LOGITS = 3
# Most training rows a gate's k-NN distance is measured against (class_balanced_bank); the
# default of ModelConfig.router_bank_size, which a model records. Chosen on validation data
# at 1x VGGSound size (docs/results/knn-bank): 32Ki rows against 4Ki gave +4.5 and +4.2 on
# `all` on two datasets, 16Ki +2.8 and +2.6, for about 3x the time of scoring CSCF (57 s at 1x).
BANK_SIZE = 32_768
CHUNK = 16_384  # rows per step where a statistic runs over all training samples


# ----------------------------------------------------------------------------- distances


def standardised(x: Matrix) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, d) of any float dtype, or its row blocks -> (mean (d,), scale (d,), z (n, d) fp32):
    x standardised by data.standard_scale as a gate reads it, filled a block at a time so
    that bf16 training vectors never have a whole fp32 (or concatenated) copy besides z."""
    mean, scale = standard_scale(x)
    z = torch.empty(matrix_shape(x), dtype=torch.float32)
    start = 0
    for part in float_blocks(x):
        z[start:start + len(part)] = (part - mean) / scale
        start += len(part)
    return mean, scale, z


def shrunk_precision(
    z: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, rows: torch.Tensor, shrinkage: float
) -> torch.Tensor:
    """Inverse of the shared within-class covariance, shrunk: (1-a) S + a * tr(S)/d * I.

    z (n, d) standardised features, labels (n,), means (C, d) of the sorted classes present
    among `rows` (indices into z, the samples used). Shared (pooled over classes) because
    a class has too few samples for its own covariance. Accumulated CHUNK rows at a time,
    so the centred copy of the data is never whole (1x VGGSound: 300 MB per copy).
    """
    pos = torch.searchsorted(labels[rows].unique(), labels[rows])
    cov = z.new_zeros(z.shape[1], z.shape[1])
    for part, p in zip(rows.split(CHUNK), pos.split(CHUNK)):
        centred = z[part] - means[p]
        cov += centred.T @ centred
    cov /= max(len(rows) - 1, 1)
    d = z.shape[1]
    target = cov.diagonal().mean().clamp_min(_EPS) * torch.eye(d)
    return torch.linalg.inv((1 - shrinkage) * cov + shrinkage * target)


def mahalanobis_min(x: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(B, d), (C, d), (d, d) -> (B,): min over the C means of sqrt((x-mu)^T P (x-mu)).

    Expanded as x'Px - 2 x'P mu + mu'P mu, so the cost is one (B, d) x (d, d) product: the
    direct form runs a (B, C, d) difference through P, C times the work and B*C*d memory
    (1.8 GB at 3,252 samples x 135 classes x 1024-d). Centring on the means' centre first
    keeps the expansion's cancellation small in float32.
    """
    centre = means.mean(0)
    x, means = x - centre, means - centre
    xp = x @ precision
    d2 = (xp * x).sum(1, keepdim=True) - 2 * xp @ means.T + ((means @ precision) * means).sum(1)[None, :]
    return d2.min(1).values.clamp_min(0).sqrt()


def nearest(x: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d), (n, d) -> distances (B, k) to the k nearest rows of bank (at most n) and their
    indices, `chunk` rows of x at a time so that the (chunk, n) distance block bounds the memory."""
    k = min(k, len(bank))
    parts = [torch.cdist(part, bank).topk(k, dim=1, largest=False) for part in x.split(chunk)]
    if not parts:
        return x.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


def knn_mean_distance(x: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """(B, d), (n, d) -> (B,): mean Euclidean distance to the k nearest rows of bank."""
    return nearest(x, bank, k, chunk)[0].mean(1)


def local_density_ratio(
    x: torch.Tensor, bank: torch.Tensor, bank_kdist: torch.Tensor, k: int, chunk: int = 4096
) -> torch.Tensor:
    """(B, d), bank (n, d), bank_kdist (n,) from bank_knn_distance -> (B,): x's mean distance
    to its k nearest bank rows over those rows' own mean k-NN distance (the simplified local
    outlier factor, Schubert et al. 2014): about 1 inside a class, whether the class is tight
    or spread out, and large away from every class. The raw distance read a spread-out seen
    class as unseen (digits4: left's gate at 0.3 on a class it saw); on the development
    datasets' validation halves the ratio raised `all` on the three with three and four
    modalities by 1.2-1.5 points (docs/results/development)."""
    dist, near = nearest(x, bank, k, chunk)
    return dist.mean(1) / bank_kdist[near].mean(1)


def bank_knn_distance(bank: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(n, d) -> (n,): each bank row's mean distance to its k nearest other rows (a single
    row: 1), floored at _EPS so that local_density_ratio never divides by 0. `chunk` rows at
    a time: the (chunk, n) distance block is 128 MB at BANK_SIZE, where 4096 rows raised the
    training stage's peak at 1x VGGSound size by 400 MB."""
    k = min(k, len(bank) - 1)
    if k < 1:
        return bank.new_ones(len(bank))
    out = []
    for start, part in zip(range(0, len(bank), chunk), bank.split(chunk)):
        dist = torch.cdist(part, bank)
        dist[torch.arange(len(part)), torch.arange(start, start + len(part))] = math.inf  # not its own neighbour
        out.append(dist.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).clamp_min(_EPS)


def class_balanced_bank(z: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """At most `size` of z's `rows` for the k-NN distance, the same number from every class
    (seeded, so a refit keeps the same bank). The gate's k-NN feature measures how dense
    the training data is around x; a few dozen samples per class keep that while the
    distance to 150 thousand training clips would make scoring 50 thousand test samples
    cost minutes and store the whole training set in the model file."""
    if len(rows) > size:
        y = labels[rows]
        per_class = max(1, size // len(y.unique()))
        g = torch.Generator().manual_seed(0)
        keep = [at[torch.randperm(len(at), generator=g)[:per_class]]
                for at in (torch.nonzero(y == c).squeeze(1) for c in y.unique())]
        rows = rows[torch.cat(keep).sort().values]
    return z[rows]


# ----------------------------------------------------------------------------- logistic gate


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> float:
    """T minimising the log loss of softmax(logits / T) over `classes` (N,) bool on held-out
    samples (labels among those classes): temperature scaling (Guo et al., 2017), with the
    labels smoothed by 1 / (n + 2). A modality that names all n held-out samples right has,
    by the rule of succession, an error rate of 1 / (n + 2), not 0; unsmoothed, T fell to
    0.001 there (digits4) and every later error of that modality vetoed the true class in
    router.expert_product. Chosen on the development datasets' validation halves: `all`
    83.0 -> 83.5 on average over four datasets (docs/results/development)."""
    if not len(labels):
        return 1.0
    smoothing = 1.0 / (len(labels) + 2)
    z = logits[:, classes].double()
    labels = torch.searchsorted(torch.nonzero(classes).squeeze(1), labels)  # positions among `classes`
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), labels, label_smoothing=smoothing)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def fit_logistic(z: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100) -> torch.Tensor:
    """Weights (F+1,) of P(y=1|z) = sigmoid(z @ w[:-1] + w[-1]), by L-BFGS on the mean
    log loss plus l2 * |w[:-1]|^2 (keeps separable data from diverging). z (n, F), y (n,)."""
    w = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    z64, y64 = z.double(), y.double()
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z64 @ w[:-1] + w[-1], y64) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def logit_features(logits: torch.Tensor, seen_m: torch.Tensor) -> torch.Tensor:
    """(B, N) logits of modality m, seen_m (N,) -> (B, 2): the best seen-class logit and
    its gap to the best unseen-class logit (the quantity calibrated stacking thresholds).
    On the default's weak audio modality they raise the gate's held-out AUC from 0.75
    (distances alone) to 0.87."""
    best_seen = logits.masked_fill(~seen_m, -math.inf).max(-1).values
    best_unseen = logits.masked_fill(seen_m, -math.inf).max(-1).values if not seen_m.all() else best_seen
    return torch.stack([best_seen, best_seen - best_unseen], 1)


def distance_features(
    z: torch.Tensor, class_means: torch.Tensor, precision: torch.Tensor, bank: torch.Tensor, k: int,
    bank_kdist: torch.Tensor | None,
) -> torch.Tensor:
    """(B, d) standardised -> (B, 2): log of the Mahalanobis distance and of the local density
    ratio (logs: the gate's decision is a ratio of distances, and the raw values are
    heavy-tailed). bank_kdist None: the raw k-NN distance instead of the ratio, as gates
    saved before the ratio were fitted."""
    maha = mahalanobis_min(z, class_means, precision)
    knn = knn_mean_distance(z, bank, k) if bank_kdist is None else local_density_ratio(z, bank, bank_kdist, k)
    return torch.stack([maha, knn], 1).clamp_min(_EPS).log()


def class_statistics(
    z: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, shrinkage: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means (C, d) of the classes among z's `rows`, and the shrunk precision."""
    y = labels[rows]
    means = torch.stack([z[rows[y == c]].mean(0) for c in y.unique()])
    return means, shrunk_precision(z, labels, means, rows, shrinkage)


class ModalityGate(nn.Module):
    """g_m(x): standardisation, seen-class statistics and the fitted logistic weights of
    one modality, all buffers (a checkpoint rebuilds it with `from_state`). A gate fitted
    with logit features (4 weights + bias) reads the modality's logits too. bank_kdist
    (bank_knn_distance of the bank) is None in gates saved before the local density ratio:
    those read the raw k-NN distance they were fitted on."""

    BUFFERS = ("in_mean", "in_std", "class_means", "precision", "bank", "feat_mean", "feat_std", "weights", "base_rate")

    def __init__(self, k: int, bank_kdist: torch.Tensor | None = None, **buffers: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("k", torch.tensor(k))
        for name in self.BUFFERS:
            self.register_buffer(name, buffers[name].float().clone())
        self.bank_kdist: torch.Tensor | None
        self.register_buffer("bank_kdist", None if bank_kdist is None else bank_kdist.float().clone())

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], name: str = "") -> "ModalityGate":
        """The gate of a state_dict (keys without prefix), checked by check_gate_state; `name`
        is the prefix its keys had, for the error message."""
        check_gate_state(state, name)
        return cls(int(state["k"]), state.get("bank_kdist"), **{field: state[field] for field in cls.BUFFERS})

    @property
    def reads_logits(self) -> bool:
        return len(self.weights) > 3

    def features(self, x: torch.Tensor, logits: torch.Tensor | None, seen_m: torch.Tensor) -> torch.Tensor:
        """(B, d) raw features, (B, N) logits -> (B, F) standardised gate features."""
        z = (x - self.in_mean) / self.in_std
        f = distance_features(z, self.class_means, self.precision, self.bank, int(self.k), self.bank_kdist)
        if self.reads_logits:
            if logits is None:
                raise ValueError("this gate was fitted with logit features: pass the modality's logits")
            f = torch.cat([f, logit_features(logits, seen_m)], 1)
        return (f - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor, logits: torch.Tensor | None, seen_m: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B,) logit of g_m(x) = P(class of x was seen by m | x_m)."""
        return self.features(x, logits, seen_m) @ self.weights[:-1] + self.weights[-1]


def check_gate_state(state: dict[str, torch.Tensor], name: str = "") -> None:
    """Raise ValueError (one line naming the field as `name` + field) unless a gate's state
    can be evaluated: every buffer present and finite, shapes consistent with the input
    dimension d = len(in_mean) and the F = len(weights) - 1 gate features (2, or 4 with
    logit features), scales > 0, k >= 1 and the base rate strictly between 0 and 1 (log pi
    and log(1 - pi) enter the posterior)."""
    for field in ("k", *ModalityGate.BUFFERS):
        if field not in state:
            raise ValueError(f"router state: {name}{field} is missing")
        if not bool(torch.isfinite(state[field]).all()):
            raise ValueError(f"router state: {name}{field} has values that are not finite")

    def shape_error(field: str, expected: str) -> ValueError:
        return ValueError(f"router state: {name}{field} has shape {tuple(state[field].shape)}, expected {expected}")

    if state["in_mean"].dim() != 1:
        raise shape_error("in_mean", "(d,)")
    if state["weights"].shape not in ((3,), (5,)):
        raise shape_error("weights", "(3,) or (5,)")
    d, f = len(state["in_mean"]), len(state["weights"]) - 1
    for field, shape in (("k", ()), ("in_std", (d,)), ("precision", (d, d)), ("feat_mean", (f,)),
                         ("feat_std", (f,)), ("base_rate", ())):
        if tuple(state[field].shape) != shape:
            raise shape_error(field, str(shape))
    for field in ("class_means", "bank"):
        t = state[field]
        if t.dim() != 2 or t.shape[1] != d or len(t) == 0:
            raise shape_error(field, f"(rows >= 1, {d})")
    for field in ("in_std", "feat_std"):
        if not bool((state[field] > 0).all()):
            raise ValueError(f"router state: {name}{field} must be > 0, got minimum {float(state[field].min())}")
    if int(state["k"]) < 1:
        raise ValueError(f"router state: {name}k must be >= 1, got {int(state['k'])}")
    if "bank_kdist" in state:  # optional: see ModalityGate
        kdist = state["bank_kdist"]
        if tuple(kdist.shape) != (len(state["bank"]),):
            raise shape_error("bank_kdist", f"({len(state['bank'])},), one per bank row")
        if not bool((torch.isfinite(kdist) & (kdist > 0)).all()):
            raise ValueError(f"router state: {name}bank_kdist must be finite and > 0")
    if not 0 < float(state["base_rate"]) < 1:
        raise ValueError(
            f"router state: {name}base_rate must lie strictly between 0 and 1, got {float(state['base_rate'])}")


def fit_gate(
    x: Matrix,
    labels: torch.Tensor,
    held_out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    k: int = 5,
    shrinkage: float = 0.5,
    bank_size: int = BANK_SIZE,
) -> ModalityGate:
    """Fit modality m's gate on its training samples x (n, d) (fp32 or bf16, or its row blocks),
    labels (n,) of its seen classes.

    held_out: (val mask (n,), pseudo-seen mask (N,), val logits (n_val, N) or None) per
    split: samples under `val` were held out of the split's statistics; those whose class
    is pseudo-seen are label 1, the rest (pseudo-unseen classes) label 0. The logits, when
    given, come from a model trained without the val samples. The gate kept uses every
    sample's statistics. With several splits its logit is rescaled by
    out_of_fold_scaling, so that it is as confident as it is right on classes it was not
    fitted on.
    """
    standard = standardised(x)
    feats, targets = held_out_set(standard[2], labels, held_out, k, shrinkage, bank_size)
    return gate_from_features(standard, labels, feats, targets, k, shrinkage, bank_size)


def held_out_set(
    z: torch.Tensor, labels: torch.Tensor, held_out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    k: int, shrinkage: float, bank_size: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per split of `held_out` (as fit_gate's), the gate features of its held-out samples and
    their labels (1: a pseudo-seen class)."""
    feats = [held_out_features(z, labels, val, pseudo, logits, k, shrinkage, bank_size)
             for val, pseudo, logits in held_out]
    return feats, [pseudo[labels[val]].float() for val, pseudo, _ in held_out]


def gate_from_features(
    standard: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: torch.Tensor, feats: list[torch.Tensor],
    targets: list[torch.Tensor], k: int, shrinkage: float, bank_size: int,
) -> ModalityGate:
    """fit_gate from its held-out features and labels, one pair per split, and `standard`, the
    (mean, scale, z) of `standardised`: the logistic weights, scaled out of fold when there
    are several splits, and every sample's statistics."""
    in_mean, in_std, z = standard
    f, y = torch.cat(feats), torch.cat(targets)
    feat_mean, feat_std = f.mean(0), f.std(0).clamp_min(_EPS)
    if len(y) and y.min() < y.max():
        # pi in [1/n, 1 - 1/n] here, but a float32 mean of tens of millions of labels can
        # round to 0 or 1, and log pi or log(1 - pi) would then be infinite
        weights, base_rate = fit_logistic((f - feat_mean) / feat_std, y), y.mean().clamp(_EPS, 1 - _EPS)
        if len(feats) > 1:
            weights = scaled_weights(weights, *out_of_fold_scaling(list(zip(feats, targets))))
    else:  # too few samples to hold out both kinds: a gate with no evidence (g = pi = 1/2, ratio 1)
        weights, base_rate = torch.zeros(f.shape[1] + 1), torch.tensor(0.5)
    every = torch.arange(len(z))
    means, precision = class_statistics(z, labels, every, shrinkage)
    bank = class_balanced_bank(z, labels, every, bank_size)
    return ModalityGate(k, bank_knn_distance(bank, k), in_mean=in_mean, in_std=in_std, class_means=means,
                        precision=precision, bank=bank, feat_mean=feat_mean, feat_std=feat_std, weights=weights,
                        base_rate=base_rate)


def scaled_weights(weights: torch.Tensor, slope: float, shift: float) -> torch.Tensor:
    """Logistic gate weights (F+1,) whose logit is slope * (the logit of `weights`) + shift."""
    return torch.cat([weights[:-1] * slope, weights[-1:] * slope + shift])


def held_out_logits(f_fit: torch.Tensor, y_fit: torch.Tensor, f_score: torch.Tensor) -> torch.Tensor:
    """A logistic gate fitted on features f_fit (n, F) with labels y_fit (n,), standardised
    by their own mean and scale, and its logits on f_score (m, F): how a gate does on
    samples it was not fitted on."""
    mean, std = f_fit.mean(0), f_fit.std(0).clamp_min(_EPS)
    w = fit_logistic((f_fit - mean) / std, y_fit.float())
    return ((f_score - mean) / std) @ w[:-1] + w[-1]


def out_of_fold_scaling(folds: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(a, b) for a gate fitted on all `folds` (features (n, F), labels (n,) per class
    hold-out): sigmoid(a * logit + b) is calibrated on classes the gate was not fitted on.

    Each fold is scored by the logistic gate fitted on the other folds (other classes held
    out, as far as the hold-outs differ), and the out-of-fold logits are Platt-scaled (Platt, 1999;
    scikit-learn's CalibratedClassifierCV with ensemble=False does the same). Fitted and
    scored on the same few held-out classes, a gate reads its own quirks of those classes as
    evidence: on digits4 (2-4 classes seen per view) out-of-fold scaling shrinks some views'
    gates to a = 0.6-0.8 and leaves others near 1. Chosen on the development
    datasets' validation halves: digits4 `all` 80.0 -> 82.5, the others within 0.3
    (docs/results/development). a is kept within [0, 1]: out of fold a gate can lose its
    evidence but is never made more confident than fitted, nor turned against its fit (with
    three folds, one of them reversed, Platt's a came out at -1.3). (1, 0), the gate as
    fitted, when no fold can be scored.
    """
    scores, labels = [], []
    for r, (f_out, y_out) in enumerate(folds if len(folds) > 1 else []):
        f = torch.cat([fo for i, (fo, _) in enumerate(folds) if i != r])
        y = torch.cat([yo for i, (_, yo) in enumerate(folds) if i != r])
        if not len(y) or y.min() == y.max():
            continue
        scores.append(held_out_logits(f, y, f_out))
        labels.append(y_out)
    if not scores or torch.cat(labels).min() == torch.cat(labels).max():
        return 1.0, 0.0
    a, b = fit_logistic(torch.cat(scores)[:, None], torch.cat(labels)).tolist()
    return min(max(a, 0.0), 1.0), b


def held_out_features(
    z: torch.Tensor, labels: torch.Tensor, val: torch.Tensor, pseudo: torch.Tensor, logits: torch.Tensor | None,
    k: int, shrinkage: float, bank_size: int = BANK_SIZE,
) -> torch.Tensor:
    """Gate features (n_val, F) of the samples under `val`, against the other samples' statistics."""
    rest = torch.nonzero(~val).squeeze(1)
    means, precision = class_statistics(z, labels, rest, shrinkage)
    bank = class_balanced_bank(z, labels, rest, bank_size)
    bank_kdist = bank_knn_distance(bank, k)
    # CHUNK rows at a time: the held-out rows' copies and (B, d) temporaries, whole, would not fit at 13x VGGSound
    f = torch.cat([distance_features(z[part], means, precision, bank, k, bank_kdist)
                   for part in torch.nonzero(val).squeeze(1).split(CHUNK)] or [z.new_zeros(0, 2)])
    return f if logits is None else torch.cat([f, logit_features(logits, pseudo)], 1)


def class_holdouts(
    labels: torch.Tensor, seen_m: torch.Tensor, holdout: float, val_share: float, repeats: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    """`repeats` model-free held-out splits for fit_gate: a share `holdout` of the seen
    classes become pseudo-unseen, and a share `val_share` of the other samples is held out."""
    classes = labels.unique()
    n_out = min(max(1, round(holdout * len(classes))), len(classes) - 1)
    if n_out < 1:
        raise ValueError(f"a gate needs at least 2 seen classes to hold one out, got {len(classes)}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(repeats):
        held = classes[torch.randperm(len(classes), generator=g)[:n_out]]
        pseudo = seen_m.clone()
        pseudo[held] = False
        val = torch.isin(labels, held) | (torch.rand(len(labels), generator=g) < val_share)
        out.append((val, pseudo, None))
    return out


# ----------------------------------------------------------------------------- combination


def seen_patterns(seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct patterns of seen (M, N): patterns (P, M) bool and each class's
    pattern index (N,)."""
    patterns, index = seen.T.unique(dim=0, return_inverse=True)
    return patterns, index


def pattern_posterior(
    gate_logit: torch.Tensor,
    present: torch.Tensor,
    seen: torch.Tensor,
    base_rate: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """P(sigma | x) for every pattern of `seen_patterns(seen)`: (B, P).

    gate_logit (M, B) logits of g_m; present (M, B) bool; seen (M, N); base_rate (M,) pi_m;
    weight (M,) w_m (default 1). Absent modalities contribute nothing.
    """
    patterns, index = seen_patterns(seen)
    prior = torch.bincount(index, minlength=len(patterns)).float() / seen.shape[1]  # (P,)
    log_in = F.logsigmoid(gate_logit) - base_rate[:, None].log()  # (M, B): log g/pi
    log_out = F.logsigmoid(-gate_logit) - (1 - base_rate[:, None]).log()  # log (1-g)/(1-pi)
    w = torch.ones(len(seen)) if weight is None else weight
    evidence = torch.where(patterns.T[:, None, :], log_in[..., None], log_out[..., None])  # (M, B, P)
    evidence = (evidence * (w[:, None, None] * present[..., None])).sum(0)  # (B, P)
    return (prior.log()[None, :] + evidence).softmax(-1)


def present_mean(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(M, B, N), present (M, B) -> (B, N): the mean of the present modalities' logits."""
    w = present.float()[..., None]
    return (logits * w).sum(0) / w.sum(0).clamp_min(1)


def expert_product(
    logits: torch.Tensor, present: torch.Tensor, seen: torch.Tensor, gate_logit: torch.Tensor,
    base_rate: torch.Tensor, weight: torch.Tensor, aligned: torch.Tensor, temperature: torch.Tensor,
) -> torch.Tensor:
    """log p(y | x) up to a constant, (B, N): a product over the present modalities of each
    one's own distribution over every class, each raised to w_m:

        q_m(y) = g_m softmax_{S_m}(l_m / T_m)(y)          if m saw y,
               = (1 - g_m) softmax_{U_m}(l_m / T_m)(y)    if not (uniform over U_m when m is
                                                          not aligned with the class semantics)

    (COSMO's mixture, per modality). g_m is the gate's posterior moved from its fitting
    prior pi_m to the share of classes m saw, so that every q_m puts 1/N on each class a
    priori and the product needs no prior correction. T_m (fit_temperature) makes m's
    softmax as confident as it is right on held-out training samples: a weak modality
    speaks softly. Unlike a posterior over patterns, the product hears whether the
    modalities agree: a class two modalities both saw is likely only if both name it.

    logits (M, B, N) raw; present (M, B); seen (M, N); gate_logit (M, B); base_rate, weight,
    temperature (M,); aligned (M,) bool.
    """
    logits = logits / temperature[:, None, None]
    share = seen.float().mean(1).clamp(_EPS, 1 - _EPS)  # (M,)
    g = gate_logit - torch.logit(base_rate)[:, None] + torch.logit(share)[:, None]  # (M, B)
    own = logits.masked_fill(~seen[:, None, :], -math.inf).log_softmax(-1)  # (M, B, N), -inf off S_m
    # a modality not aligned with the class semantics knows nothing of the classes it never
    # saw: its scores there are sharp but arbitrary, so it spreads (1 - g_m) evenly over them
    spoken = torch.where(aligned[:, None, None], logits, torch.zeros_like(logits))
    other = spoken.masked_fill(seen[:, None, :], -math.inf).log_softmax(-1)
    log_q = torch.where(seen[:, None, :], F.logsigmoid(g)[..., None] + own, F.logsigmoid(-g)[..., None] + other)
    w = (weight[:, None] * present.float())[..., None]  # (M, B, 1)
    return (torch.nan_to_num(log_q, nan=-1e4, neginf=-1e4) * w).sum(0)


def routed_probs(
    logits: torch.Tensor, present: torch.Tensor, seen: torch.Tensor, posterior: torch.Tensor, hard: bool
) -> torch.Tensor:
    """p(y | x) = sum_sigma P(sigma|x) softmax over sigma's classes of l_sigma: (B, N).

    logits (M, B, N); present (M, B); posterior (B, P) over `seen_patterns(seen)`.
    hard=True puts all weight on the most probable pattern.
    """
    patterns, index = seen_patterns(seen)
    if hard:
        posterior = F.one_hot(posterior.argmax(-1), len(patterns)).float()
    probs = logits.new_zeros(logits.shape[1:])
    pf = present.float()
    for p, pattern in enumerate(patterns):
        speak = pf * pattern[:, None]  # (M, B): present modalities that saw sigma's classes
        speak = torch.where(speak.sum(0, keepdim=True) > 0, speak, pf)  # none: all present
        mean = (logits * speak[..., None]).sum(0) / speak.sum(0)[:, None].clamp_min(1)
        in_p = index == p
        sm = mean.masked_fill(~in_p, -math.inf).softmax(-1)
        probs = probs + posterior[:, p : p + 1] * sm
    return probs


def ceiling_probs(
    logits: torch.Tensor, present: torch.Tensor, seen: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The routing ceiling's p(y | x) (B, N): hard routing to the true class's pattern, so
    only the present modalities that saw the class speak, over the classes they share.
    Reads the labels: a diagnostic of how much better routing could do, never a method."""
    patterns, index = seen_patterns(seen)
    return routed_probs(logits, present, seen, F.one_hot(index[labels], len(patterns)).float(), hard=True)


def routing_correct(posterior: torch.Tensor, seen: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the router's most probable pattern is the true class's pattern."""
    return posterior.argmax(-1) == seen_patterns(seen)[1][labels]


class GateRouter(nn.Module):
    """The learned router: one ModalityGate per modality and the evidence weights w_m."""

    def __init__(
        self, gates: list[ModalityGate], weight: torch.Tensor | None = None, temperature: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.gates = nn.ModuleList(gates)
        ones = torch.ones(len(gates))
        self.register_buffer("weight", ones if weight is None else weight.float().clone())
        self.register_buffer("temperature", ones.clone() if temperature is None else temperature.float().clone())

    @property
    def base_rate(self) -> torch.Tensor:
        return torch.stack([g.base_rate for g in self.gates])

    def gate_logits(self, features: list[torch.Tensor], logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """(M, B) logits of g_m for every modality; logits (M, B, N) raw (uncalibrated)
        model logits, seen (M, N). Absent rows give values pattern_posterior masks out."""
        return torch.stack([gate(x, lo, s) for gate, x, lo, s in zip(self.gates, features, logits, seen)])

    def rescale(self, slope: list[float], shift: list[float]) -> None:
        """Every gate's logit becomes slope_m * logit + shift_m (selection.gate_scaling: Platt
        scaling on labelled multimodal samples)."""
        for gate, a, b in zip(self.gates, slope, shift):
            gate.weights = scaled_weights(gate.weights, a, b)

    def posterior(self, gate_logit: torch.Tensor, present: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """gate_logit (M, B) from gate_logits, present (M, B), seen (M, N) -> P(sigma | x) (B, P)
        over seen_patterns(seen)."""
        return pattern_posterior(gate_logit, present, seen, self.base_rate, self.weight)


def fit_router(
    train: TrainData, seen: torch.Tensor, holdout: float, seed: int, repeats: int = 3, k: int = 5,
    shrinkage: float = 0.5, bank_size: int = BANK_SIZE,
) -> GateRouter:
    """Distance-only gates from training data alone: `repeats` class hold-outs per modality."""
    return GateRouter([
        fit_gate(x, y, class_holdouts(y, seen[m], holdout, 0.2, repeats, seed + m), k, shrinkage, bank_size)
        for m, (x, y) in enumerate(zip(train.features, train.labels))
    ])


def fit_router_with_logits(
    fit: TrainData, val: TrainData, pseudo_seen: torch.Tensor, val_logits: list[torch.Tensor], holdout: float,
    seed: int, repeats: int = 3, k: int = 5, shrinkage: float = 0.5, bank_size: int = BANK_SIZE,
) -> GateRouter:
    """Gates fitted on the pseudo-unseen split that calibration.pseudo_unseen_split made,
    with val_logits (n_val_m, N) per modality from the model trained on `fit` (the one
    calibrated stacking already trains).

    Per modality the logit features are kept only where the split held out at least
    MIN_HELD_OUT_FOR_LOGITS classes and they raise the gate's AUC on held-out samples
    (two-fold on `val`). With one pseudo-unseen class (digits: 5 seen classes per
    modality) the logit gate learns that one class's quirks: there it lowered the test
    AUC of the left half from 0.87 to 0.80 although the held-out AUC rose, while with 3-4
    held-out classes (pydocs, default) it raised routing by 5-6 points. The distance-only
    gate is fitted on several class hold-outs, as fit_router does.
    """
    gates = []
    for m in range(len(fit.features)):
        x = [fit.features[m], val.features[m]]  # read in order, never concatenated (GBs at 13x)
        y = torch.cat([fit.labels[m], val.labels[m]])
        is_val = torch.arange(len(y)) >= len(fit.labels[m])
        standard = standardised(x)  # once per modality: at 13x VGGSound each pass over x costs minutes
        if int((~pseudo_seen[m][y.unique()]).sum()) >= MIN_HELD_OUT_FOR_LOGITS:
            distances = held_out_features(standard[2], y, is_val, pseudo_seen[m], None, k, shrinkage, bank_size)
            with_logits = torch.cat([distances, logit_features(val_logits[m], pseudo_seen[m])], 1)
            target = pseudo_seen[m][y[is_val]]
            if _logits_help(distances, with_logits, target):
                gates.append(gate_from_features(standard, y, [with_logits], [target.float()], k, shrinkage, bank_size))
                continue
        seen_m = torch.zeros_like(pseudo_seen[m])
        seen_m[y.unique()] = True
        splits = class_holdouts(y, seen_m, holdout, 0.2, repeats, seed + m)
        feats, targets = held_out_set(standard[2], y, splits, k, shrinkage, bank_size)
        gates.append(gate_from_features(standard, y, feats, targets, k, shrinkage, bank_size))
    return GateRouter(gates)


@torch.no_grad()
def fit_router_from_model(
    model: nn.Module, fit: TrainData, val: TrainData, pseudo_seen: torch.Tensor, holdout: float, seed: int,
    bank_size: int = BANK_SIZE,
) -> GateRouter:
    """fit_router_with_logits with the validation logits of `model` (a CSCF trained on
    `fit` over the pseudo-seen classes: the model calibrated stacking trains), raw mean
    over its K modules as the final model's router reads them, and each modality's
    temperature (fit_temperature) on those logits of its pseudo-seen samples."""
    val_logits = [model.mean_logits(m, x) for m, x in enumerate(val.features)]
    router = fit_router_with_logits(fit, val, pseudo_seen, val_logits, holdout, seed, bank_size=bank_size)
    router.temperature = torch.tensor([fit_temperature(lo[pseudo_seen[m][y]], y[pseudo_seen[m][y]], pseudo_seen[m])
                                       for m, (lo, y) in enumerate(zip(val_logits, val.labels))])
    return router


def _logits_help(distances: torch.Tensor, with_logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Two-fold held-out AUC of the gate on its distance features alone and with the logit
    features (the same held-out samples, target (n,) bool): True if higher with."""
    fold = torch.arange(len(target)) % 2 == 0
    if any(t.all() or not t.any() for t in (target[fold], target[~fold])):
        return False
    score = {}
    for use, f in ((False, distances), (True, with_logits)):
        score[use] = 0.0
        for a in (fold, ~fold):
            score[use] += auc(held_out_logits(f[a], target[a], f[~a]), target[~a])
    return score[True] > score[False]


def auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half.

    The Mann-Whitney U statistic from ranks, tied scores sharing their average rank: one
    sort, O(n log n) time and O(n) memory. Comparing every positive with every negative
    would hold n_pos x n_neg entries, tens of GB at VGGSound's hundreds of thousands of
    held-out rows. Ranks are summed in float64, exact far beyond those sizes.
    """
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs positives and negatives, got {n_pos} and {n_neg}")
    _, group, counts = score.double().unique(return_inverse=True, return_counts=True)  # sorted scores
    counts = counts.double()
    # tie group j holds ranks start_j + 1 .. start_j + counts_j (1-based): mean start_j + (counts_j + 1) / 2
    mean_rank = counts.cumsum(0) - counts + (counts + 1) / 2
    u = mean_rank[group][positive].sum() - n_pos * (n_pos + 1) / 2  # U = R_pos - n_pos (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def router_from_state(state: dict[str, torch.Tensor], prefix: str) -> GateRouter:
    """Rebuild a GateRouter from a state_dict whose router keys start with `prefix`.

    Every value is checked first (check_gate_state): a model file is input, and a base
    rate of 0 or 1, a zero scale or a mismatched shape would otherwise surface as NaN
    predictions far from the file that caused them.
    """
    found = {key[len(prefix):].split(".")[1] for key in state if key.startswith(prefix + "gates.")}
    n = len(found)
    if n == 0 or found != {str(m) for m in range(n)}:
        raise ValueError(f"router state: {prefix}gates.* must number the gates 0..M-1, got {sorted(found) or 'none'}")
    gates = [ModalityGate.from_state({key[len(f"{prefix}gates.{m}."):]: v for key, v in state.items()
                                      if key.startswith(f"{prefix}gates.{m}.")}, f"{prefix}gates.{m}.")
             for m in range(n)]
    weight = _per_gate(state, prefix + "weight", n, positive=False)
    # routers saved before temperatures existed (they fused with gate_mix "prior", which does
    # not read them) load with T = 1
    state.setdefault(prefix + "temperature", torch.ones(n))
    return GateRouter(gates, weight, _per_gate(state, prefix + "temperature", n, positive=True))


def _per_gate(state: dict[str, torch.Tensor], key: str, n: int, positive: bool) -> torch.Tensor:
    """state[key], checked to hold one finite value per gate, >= 0 (or > 0 when `positive`)."""
    value = state.get(key)
    if value is None:
        raise ValueError(f"router state: {key} is missing")
    if tuple(value.shape) != (n,):
        raise ValueError(f"router state: {key} has shape {tuple(value.shape)}, expected ({n},), one per gate")
    if not bool((torch.isfinite(value) & ((value > 0) if positive else (value >= 0))).all()):
        raise ValueError(f"router state: {key} must be finite and {'>' if positive else '>='} 0, got {value.tolist()}")
    return value
