"""What the seven baselines share: the `Baseline` interface, one minibatch training loop,
the paper's "one unimodal model per modality + confidence selection" wrapper for the
zero-shot methods, calibrated stacking for methods with per-modality class scores, and
the small building blocks used by more than one method.

The training loop draws batches with the CSCF trainer's own `epoch_batches`,
so baselines and CSCF see the same samples in the same order for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import SeenUnseenCurve, margin_rule, pseudo_unseen_split
from ..data import TrainData
from ..trainer import TrainConfig, epoch_batches, resolve_device


@dataclass
class BaselineOutput:
    scores: torch.Tensor  # (B, N) class scores over all classes; argmax = prediction
    dominant: torch.Tensor  # (B,) modality whose prediction (or largest weight) decided


class Baseline(nn.Module):
    """A method over M modalities and N classes, trained under the MMHCL protocol.

    class_emb (N, d_s) and seen (M, N) are buffers; so are the per-modality feature
    mean/std fitted on the training data, so a state_dict rebuilds the model exactly.
    Subclasses define `loss` (one training batch) and `predict`. A method that scores
    every class per modality also defines `modality_logits` and sets `calibratable`:
    calibrated stacking (`fit_margins`, `calibration_offset`) then applies to it.
    """

    calibratable = False

    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__()
        self.input_dims = list(input_dims)
        self.register_buffer("class_emb", class_emb.float().clone())
        self.register_buffer("seen", seen.bool().clone())
        for m, d in enumerate(self.input_dims):
            self.register_buffer(f"in_mean_{m}", torch.zeros(d))
            self.register_buffer(f"in_std_{m}", torch.ones(d))
        self.register_buffer("margin", torch.zeros(len(self.input_dims)))

    @property
    def n_classes(self) -> int:
        return self.class_emb.shape[0]

    def prepare(self, data: TrainData) -> None:
        """Fit what comes from the training data before the first step (feature statistics)."""
        for m, x in enumerate(data.features):
            if len(x) > 1:
                getattr(self, f"in_mean_{m}").copy_(x.mean(0))
                getattr(self, f"in_std_{m}").copy_(x.std(0).clamp_min(1e-6))

    def standardise(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Modality m's features with the training mean/std fitted in `prepare`."""
        return (x.to(self.class_emb.device) - getattr(self, f"in_mean_{m}")) / getattr(self, f"in_std_{m}")

    def inputs(self, features: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Standardised features; absent rows become zero vectors (the padding of appendix D)."""
        return [self.standardise(m, x) * p.to(self.class_emb.device)[:, None]
                for m, (x, p) in enumerate(zip(features, present.T))]

    def calibration_offset(self, present: torch.Tensor) -> torch.Tensor:
        """(M, B, N): what calibrated stacking subtracts from modality m's class scores:
        its margin on its seen classes, on samples that show modality m alone. The rule
        of CSCF's `calibration_offset` (cscf_model/cscf.py): with several modalities the
        method's own selection decides, and a margin would blur the confidence it reads."""
        single = (present.sum(1) == 1).to(self.margin.dtype)  # (B,)
        return (self.margin[:, None] * self.seen)[:, None, :] * single[None, :, None]

    def modality_logits(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """(B, N) class scores of modality m alone, on standardised features, uncalibrated."""
        raise NotImplementedError(f"{type(self).__name__} has no per-modality class scores")

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        raise NotImplementedError

    def init_extra(self) -> None:
        """Initialise raw nn.Parameters that no submodule's reset_parameters covers."""

    def fit(self, data: TrainData, cfg: TrainConfig) -> list[float]:
        """Adam on `loss` over the MMHCL batches; returns per-epoch mean losses.

        Weights are re-initialised from cfg.seed first, so the result depends only on the
        seed and not on what the global RNG did before. Ends on CPU in eval mode.
        """
        self._check(data)
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        for module in self.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if module is not self and reset is not None:
                reset()
        self.init_extra()
        self.prepare(data)
        self.to(device)
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        losses = []
        for epoch in range(cfg.epochs):
            self.train()
            total, steps = 0.0, 0
            for feats, labels, present in epoch_batches(data, cfg, epoch, device):
                loss = self.loss(self.inputs(feats, present), labels, present, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            losses.append(total / max(steps, 1))
        self.to("cpu").eval()
        return losses

    def _check(self, data: TrainData) -> None:
        if len(data.features) != len(self.input_dims):
            raise ValueError(f"training data has {len(data.features)} modalities, model {len(self.input_dims)}")
        for m, (x, y) in enumerate(zip(data.features, data.labels)):
            if x.shape[1:] != (self.input_dims[m],) or len(x) != len(y):
                raise ValueError(f"modality {m}: features {tuple(x.shape)} / labels {tuple(y.shape)}, "
                                 f"expected (n, {self.input_dims[m]}) / (n,)")
            if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
                raise ValueError(f"modality {m}: labels must lie in [0, {self.n_classes}), got {y.min()}..{y.max()}")
            unseen = y[~self.seen[m].cpu()[y]]
            if len(unseen):
                raise ValueError(
                    f"modality {m}: training labels {sorted(set(unseen.tolist()))} are not its seen classes"
                )


def fit_margins(
    make: Callable[[torch.Tensor], Baseline],
    data: TrainData,
    seen: torch.Tensor,
    cfg: TrainConfig,
    holdout: float,
    criterion: str,
    max_seen_drop: float | None,
    aligned: torch.Tensor,
) -> list[float]:
    """Calibrated stacking's margin per modality, chosen on training data only, exactly as
    for CSCF (calibration.fit_margins): a copy of the method, make(pseudo_seen), is trained
    without a held-out share of each modality's seen classes, and each modality's margin
    is the best one on its held-out samples by calibration.margin_rule (`aligned` (M,):
    the modalities text-aligned with the class semantics). The copy is then discarded."""
    fit, pseudo_seen, val = pseudo_unseen_split(data, seen, holdout, 0.2, cfg.seed)
    model = make(pseudo_seen)
    if not model.calibratable:
        raise ValueError(f"{type(model).__name__} has no per-modality class scores to calibrate")
    model.fit(fit, cfg)
    margins = []
    with torch.no_grad():
        for m, (x, y) in enumerate(zip(val.features, val.labels)):
            logits = model.modality_logits(m, model.standardise(m, x))
            curve = SeenUnseenCurve.from_logits(logits, y, pseudo_seen[m])
            margins.append(curve.best_margin(*margin_rule(criterion, max_seen_drop, bool(aligned[m]))))
    return margins


# ----------------------------------------------------------------------------- building blocks


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def semantic_inputs(class_emb: torch.Tensor) -> torch.Tensor:
    """Unit-norm class vectors scaled by sqrt(d_s): entries of order 1 as network inputs."""
    return F.normalize(class_emb.float(), dim=-1) * math.sqrt(class_emb.shape[1])


def evidential_loss(alpha: torch.Tensor, y: torch.Tensor, anneal: float) -> torch.Tensor:
    """TMC's per-sample loss on Dirichlet(alpha): expected CE (digamma form) plus an
    annealed KL(Dir(alpha~) || Dir(1)), alpha~ = alpha with the true class's evidence removed."""
    onehot = F.one_hot(y, alpha.shape[1]).to(alpha.dtype)
    s = alpha.sum(1)
    ce = (onehot * (torch.digamma(s)[:, None] - torch.digamma(alpha))).sum(1)
    a = onehot + (1 - onehot) * alpha
    sa = a.sum(1)
    kl = (
        torch.lgamma(sa) - math.lgamma(alpha.shape[1]) - torch.lgamma(a).sum(1)
        + ((a - 1) * (torch.digamma(a) - torch.digamma(sa)[:, None])).sum(1)
    )
    return ce + anneal * kl


def transformer(d_model: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """A pre-norm transformer encoder over (B, tokens, d_model)."""
    layer = nn.TransformerEncoderLayer(d_model, heads, 2 * d_model, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)


def key_padding(present: torch.Tensor) -> torch.Tensor:
    """(B, M) presence -> attention key mask (True = ignore). A row with no view keeps all
    keys so that attention stays finite; such rows carry no prediction anyway."""
    return ~present & present.any(1, keepdim=True)


# ----------------------------------------------------------------------------- zero-shot pairs


class UnimodalZSL(nn.Module):
    """One modality's zero-shot model: trained on its seen classes, scores all N classes."""

    def __init__(self, d_in: int, class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("sem", semantic_inputs(class_emb))  # (N, d_s)
        self.register_buffer("seen_m", seen.bool().clone())  # (N,)

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit what the method reads from its (standardised) training data before training."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ConfidencePair(Baseline):
    """The CSCF paper's protocol for unimodal zero-shot methods (section 4.1), for M >= 2
    modalities: one model per modality, each trained on its own seen classes (sets may
    overlap); a unimodal sample goes to its modality's model, a multimodal sample takes
    the prediction of the present model with the largest maximum softmax probability."""

    calibratable = True

    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor,
                 unimodal: Callable[[int, torch.Tensor, torch.Tensor], UnimodalZSL]) -> None:
        super().__init__(input_dims, class_emb, seen)
        self.models = nn.ModuleList(unimodal(d, self.class_emb, s) for d, s in zip(input_dims, self.seen))

    def prepare(self, data: TrainData) -> None:
        super().prepare(data)
        for m, (model, x, y) in enumerate(zip(self.models, data.features, data.labels)):
            model.prepare(self.standardise(m, x), y.to(self.class_emb.device))

    def modality_logits(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return self.models[m].logits(x)

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        terms = [model.loss(x[p], labels[p]) for model, x, p in zip(self.models, feats, present.T) if p.any()]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        feats = self.inputs(features, present)
        logits = torch.stack([self.modality_logits(m, x) for m, x in enumerate(feats)])  # (M, B, N)
        logp = (logits - self.calibration_offset(present)).log_softmax(-1)
        confidence = logp.amax(-1).masked_fill(~present.T, -math.inf)  # (M, B)
        dominant = confidence.argmax(0)
        scores = logp[dominant, torch.arange(logp.shape[1], device=logp.device)]
        return BaselineOutput(scores.cpu(), dominant.cpu())


class CVAE(nn.Module):
    """Conditional VAE; its decoder is the feature generator G(z, s) -> x of the
    generation-based methods (ZLA, DGZ), trained without an adversary."""

    def __init__(self, d_x: int, d_s: int, hidden: int = 256, d_z: int = 64) -> None:
        super().__init__()
        self.d_z = d_z
        self.encoder = mlp(d_x + d_s, hidden, 2 * d_z)
        self.decoder = mlp(d_z + d_s, hidden, d_x)

    def loss(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(torch.cat([x, s], -1)).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = 0.5 * (self.decoder(torch.cat([z, s], -1)) - x).pow(2).sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return (recon + kl).mean() / x.shape[1]

    def sample(self, s: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([torch.randn(len(s), self.d_z, device=s.device), s], -1))


class PrototypeHead(nn.Module):
    """ZLA's and DGZ's classifier: class semantics -> feature-space prototypes,
    logits = cos(x, P(s_c)) / tau over all classes (tau = 0.04 in both repositories)."""

    def __init__(self, d_s: int, d_x: int, hidden: int = 512, tau: float = 0.04) -> None:
        super().__init__()
        self.net, self.tau = mlp(d_s, hidden, d_x), tau

    def forward(self, x: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.net(sem), dim=-1).T / self.tau


def synthetic_labels(unseen: torch.Tensor, batch: int, n_train: int, per_class: int) -> torch.Tensor:
    """Labels of the synthetic unseen-class features mixed into one batch: per_class per
    unseen class per pass over the real data, spread over its batches."""
    k = math.ceil(per_class * batch / max(n_train, 1))
    return unseen.nonzero().squeeze(1).repeat_interleave(k)
