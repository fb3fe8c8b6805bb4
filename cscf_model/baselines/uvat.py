"""UVaT: uncertainty-aware view-aware transformer for incomplete multi-view classification
(TIP 2024, reference [3] of the CSCF paper).

Core idea, as the CSCF paper describes it: "a view-aware transformer masks the missing
views and adaptively explores the relationship between views and the target task".
- View-aware tokens: each view is embedded and gets a learned view embedding, so the
  transformer knows which view a token is; missing views are masked out of attention.
- Per-view uncertainty: each view token has an evidential head (softplus evidence,
  Dirichlet alpha = e + 1, uncertainty u = N / sum alpha), trained with the evidential
  loss of TMC (common.evidential_loss).
- Uncertainty-weighted fusion: the task representation pools the present view tokens
  with weights proportional to 1 - u (more certain views count more); a linear
  classifier over all classes reads it.
Loss: CE(fused) + mean over present (sample, view) pairs of the annealed evidential loss.

MMHCL: each training sample has one view, the other masked; unseen classes of a view are
never its labels, so A_u and B_u are ~0.

Deviation: no official code or full text was available offline; this follows the CSCF
paper's one-line description; the evidential head and 1 - u weights are our reading
of "uncertainty-aware". Sizes as in lmvcat.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Baseline, BaselineOutput, evidential_loss, key_padding, transformer
from .tmc import ANNEAL_EPOCHS

D_MODEL, HEADS, LAYERS, DROPOUT = 128, 4, 2, 0.1


class UVaT(Baseline):
    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(input_dims, class_emb, seen)
        n = self.n_classes
        self.embed = nn.ModuleList(nn.Linear(d, D_MODEL) for d in input_dims)
        self.view_emb = nn.Parameter(torch.empty(len(input_dims), D_MODEL))
        self.transformer = transformer(D_MODEL, HEADS, LAYERS, DROPOUT)
        self.evidence = nn.Linear(D_MODEL, n)
        self.head = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(D_MODEL, n))
        self.init_extra()

    def init_extra(self) -> None:
        nn.init.normal_(self.view_emb, std=0.02)

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> fused logits (B, N), per-view Dirichlet alphas (B, M, N), uncertainties (B, M)."""
        tokens = torch.stack([e(x) for e, x in zip(self.embed, feats)], 1) + self.view_emb  # (B, M, D)
        tokens = self.transformer(tokens, src_key_padding_mask=key_padding(present))
        alpha = F.softplus(self.evidence(tokens)) + 1
        u = self.n_classes / alpha.sum(-1)  # (B, M) in (0, 1]
        w = (1 - u + 1e-6) * present
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        return self.head((tokens * w[..., None]).sum(1)), alpha, u

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        logits, alpha, _ = self(feats, present)
        anneal = min(1.0, epoch / ANNEAL_EPOCHS)
        evidential = evidential_loss(alpha[present], labels[:, None].expand_as(present)[present], anneal)
        return F.cross_entropy(logits, labels) + evidential.mean()

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        logits, _, u = self(self.inputs(features, present), present)
        dominant = u.masked_fill(~present, torch.inf).argmin(1)
        return BaselineOutput(logits.softmax(-1).cpu(), dominant.cpu())
