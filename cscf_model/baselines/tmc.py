"""TMC: Trusted Multi-View Classification (Han, Zhang, Fu, Zhou, ICLR 2021 / TPAMI 2022;
hanmenghan/TMC).

Core idea. Each view has an evidence network (non-negative outputs through softplus)
that parameterises a Dirichlet, alpha = e + 1. Subjective logic turns it into an opinion:
belief masses b_k = e_k / S and an uncertainty mass u = K / S (S = sum alpha). Opinions of
the views are combined with the reduced Dempster-Shafer rule
    C = sum_{i != j} b1_i b2_j,  b = (b1 b2 + b1 u2 + b2 u1) / (1 - C),  u = u1 u2 / (1 - C),
so a confident view dominates an uncertain one. Loss per view and for the combination:
the expected cross entropy under the Dirichlet (digamma form) plus a KL term, annealed in
over ANNEAL_EPOCHS, that pulls the evidence of wrong classes to zero.

MMHCL: a classifier over all N classes; an absent view carries the vacuous opinion
(b = 0, u = 1), which leaves the other view's opinion unchanged, i.e. it is skipped in
the combination. Unseen classes of a view never get evidence from it, so A_u and B_u
are ~0 (as in the CSCF paper's Table 1).

Deviations from the original: per-view losses average over the samples that have the
view (the original's data are complete); evidence networks have one hidden layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Baseline, BaselineOutput, evidential_loss, mlp

HIDDEN = 256
ANNEAL_EPOCHS = 50  # the repository's lambda_epochs


def opinion(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirichlet (B, K) -> belief masses (B, K) and uncertainty (B, 1)."""
    s = alpha.sum(-1, keepdim=True)
    return (alpha - 1) / s, alpha.shape[-1] / s


def ds_combine(alphas: list[torch.Tensor]) -> torch.Tensor:
    """Reduced Dempster-Shafer combination of the views' Dirichlets, left to right."""
    b, u = opinion(alphas[0])
    k = alphas[0].shape[-1]
    for alpha in alphas[1:]:
        b2, u2 = opinion(alpha)
        conflict = b.sum(-1, keepdim=True) * b2.sum(-1, keepdim=True) - (b * b2).sum(-1, keepdim=True)
        b, u = (b * b2 + b * u2 + b2 * u) / (1 - conflict), u * u2 / (1 - conflict)
    return b * (k / u) + 1  # back to alpha: S = K / u, e = b S


class TMC(Baseline):
    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(input_dims, class_emb, seen)
        self.evidence = nn.ModuleList(mlp(d, HIDDEN, self.n_classes, dropout=0.1) for d in input_dims)

    def alphas(self, feats: list[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Per view Dirichlet parameters; absent rows get alpha = 1 (the vacuous opinion)."""
        return [F.softplus(net(x)) * p[:, None] + 1 for net, x, p in zip(self.evidence, feats, present.T)]

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        anneal = min(1.0, epoch / ANNEAL_EPOCHS)
        alphas = self.alphas(feats, present)
        total = evidential_loss(ds_combine(alphas), labels, anneal).mean()
        for alpha, p in zip(alphas, present.T):
            if p.any():
                total = total + evidential_loss(alpha[p], labels[p], anneal).mean()
        return total

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        alphas = self.alphas(self.inputs(features, present), present)
        combined = ds_combine(alphas)
        u = torch.stack([opinion(a)[1].squeeze(-1) for a in alphas])  # (M, B)
        dominant = u.masked_fill(~present.T, torch.inf).argmin(0)
        return BaselineOutput((combined / combined.sum(-1, keepdim=True)).cpu(), dominant.cpu())
