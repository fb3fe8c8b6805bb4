"""UVaT: Uncertainty incorporated View-aware Transformer for robust multi-view
classification (Li, Luo, Du, TIP 2024; reference [3] of the CSCF paper).

Core idea.
- View-aware transformer: each view is embedded into a token with a learned view
  embedding, so the transformer knows which view a token is; missing views are masked
  out of attention, so an absent view never contaminates a present one.
- Per-view predictions with ensemble uncertainty: every view token feeds ENSEMBLE
  classifier heads of its own; the view's prediction is the members' mean logits and
  its uncertainty u_v the normalised entropy of the members' mean probability,
  H(mean_e softmax(l_ve)) / log N in [0, 1] (members that disagree, or agree on a flat
  distribution, both make it high).
- Late fusion: the fused logits are the present views' logits weighted by their
  certainty, sum_v w_v l_v with w_v = (1 - u_v) / sum_present (1 - u_v), so the view
  that is surer of its class decides more.
- Category consistency: predictions of samples of the same category agree, whichever
  view they come from: each (sample, view) probability is pulled (KL) towards the
  batch's mean probability of its category over all present views.
Loss: CE(fused) + mean over present (sample, view) of each member's CE
+ LAMBDA_CC * category consistency.

MMHCL: each training sample shows one view; unseen classes of a view are never its
labels, so A_u and B_u are ~0.

Deviations: no official code or full text was available offline. The structure above
(masked view-aware transformer, ensemble-uncertainty late fusion, category-consistency
term) follows the CSCF paper's description and issue 15; the exact forms (entropy of the
ensemble mean as u, 1 - u weights, the class-mean KL as the consistency term) are our
reading. Sizes as in lmvcat.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Baseline, BaselineOutput, key_padding, transformer

D_MODEL, HEADS, LAYERS, DROPOUT = 128, 4, 2, 0.1
ENSEMBLE = 3
LAMBDA_CC = 1.0


def ensemble_uncertainty(member_logits: torch.Tensor) -> torch.Tensor:
    """(..., E, N) member logits -> (...) normalised entropy of the members' mean probability."""
    p = member_logits.softmax(-1).mean(-2)
    return -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])


def late_fusion(view_logits: torch.Tensor, u: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, M, N) per-view logits, (B, M) uncertainties, (B, M) presence -> (B, N): the
    present views' logits weighted by (1 - u), normalised over the present views."""
    w = (1 - u + 1e-6) * present
    w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
    return (view_logits * w[..., None]).sum(1)


def category_consistency(log_p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(R, N) log-probabilities of R (sample, view) predictions with their labels (R,):
    mean KL(mean prediction of the row's category (fixed) || row's prediction)."""
    p = log_p.exp()
    classes, index = labels.unique(return_inverse=True)
    means = torch.zeros(len(classes), p.shape[1], dtype=p.dtype, device=p.device).index_add_(0, index, p.detach())
    target = means / torch.bincount(index, minlength=len(classes))[:, None]
    return F.kl_div(log_p, target[index], reduction="batchmean")


class UVaT(Baseline):
    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(input_dims, class_emb, seen)
        n = self.n_classes
        self.embed = nn.ModuleList(nn.Linear(d, D_MODEL) for d in input_dims)
        self.view_emb = nn.Parameter(torch.empty(len(input_dims), D_MODEL))
        self.transformer = transformer(D_MODEL, HEADS, LAYERS, DROPOUT)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(D_MODEL, ENSEMBLE * n)) for _ in input_dims
        )
        self.init_extra()

    def init_extra(self) -> None:
        nn.init.normal_(self.view_emb, std=0.02)

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> fused logits (B, N), member logits (B, M, E, N), view uncertainties (B, M)."""
        tokens = torch.stack([e(x) for e, x in zip(self.embed, feats)], 1) + self.view_emb  # (B, M, D)
        tokens = self.transformer(tokens, src_key_padding_mask=key_padding(present))
        members = torch.stack([h(tokens[:, v]) for v, h in enumerate(self.heads)], 1)
        members = members.view(len(tokens), len(self.heads), ENSEMBLE, self.n_classes)
        u = ensemble_uncertainty(members)
        return late_fusion(members.mean(2), u, present), members, u

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        fused, members, _ = self(feats, present)
        rows = labels[:, None].expand_as(present)[present]  # (R,) label of each present (sample, view)
        per_view = members[present]  # (R, E, N)
        member_ce = F.cross_entropy(per_view.reshape(-1, self.n_classes), rows.repeat_interleave(ENSEMBLE))
        consistency = category_consistency(per_view.mean(1).log_softmax(-1), rows)
        return F.cross_entropy(fused, labels) + member_ce + LAMBDA_CC * consistency

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        fused, _, u = self(self.inputs(features, present), present)
        dominant = u.masked_fill(~present, torch.inf).argmin(1)
        return BaselineOutput(fused.softmax(-1).cpu(), dominant.cpu())
