"""Multimodal Dynamics (Han, Huang, Bian, Yao, CVPR 2022, "Multimodal Dynamics: Dynamical
Fusion for Trustworthy Multimodal Classification"; TencentAILabHealthcare/mmdynamics).

Core idea. Fusion adapts to each sample at two levels:
- feature level: a sigmoid gate per input feature, g = sigmoid(W x), keeps x * g; an L1
  penalty on g makes the gates sparse, so only informative features pass;
- modality level: each modality has its own classifier and a confidence head trained to
  regress the True Class Probability (TCP, the softmax probability of the true class);
  the modality's hidden features are scaled by that confidence before the fused
  classifier reads their concatenation.
Loss: CE(fused) + sum over modalities [mean(g) + MSE(confidence, TCP) + CE(modality)].

MMHCL: a classifier over all N classes; an absent modality is a zero vector (appendix
D's zero padding, applied after standardisation, i.e. the training mean). Unseen classes
of a modality are never labels of its samples, so A_u and B_u are ~0.

Deviation from the original: the per-modality terms (gate sparsity, TCP regression,
modality CE) average over the samples that have the modality; on padding they would
train the heads to read a constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Baseline, BaselineOutput

HIDDEN = 256
DROPOUT = 0.5  # the repository's setting


class Mmdynamics(Baseline):
    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(input_dims, class_emb, seen)
        n, m = self.n_classes, len(input_dims)
        self.gate = nn.ModuleList(nn.Linear(d, d) for d in input_dims)
        self.encoder = nn.ModuleList(nn.Linear(d, HIDDEN) for d in input_dims)
        self.classifier = nn.ModuleList(nn.Linear(HIDDEN, n) for _ in input_dims)
        self.confidence = nn.ModuleList(nn.Linear(HIDDEN, 1) for _ in input_dims)
        self.fused = nn.Linear(m * HIDDEN, n)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """-> fused logits (B, N), modality logits (M, B, N), TCP confidences (M, B), gates [(B, d_m)]."""
        gates, hidden, logits, conf = [], [], [], []
        for m, x in enumerate(feats):
            g = torch.sigmoid(self.gate[m](x))
            h = F.dropout(F.relu(self.encoder[m](x * g)), DROPOUT, self.training)
            c = self.confidence[m](h)  # (B, 1)
            gates.append(g)
            logits.append(self.classifier[m](h))
            conf.append(c.squeeze(1))
            hidden.append(h * c)
        return self.fused(torch.cat(hidden, 1)), torch.stack(logits), torch.stack(conf), gates

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        fused, logits, conf, gates = self(feats)
        total = F.cross_entropy(fused, labels)
        for m, p in enumerate(present.T):
            if not p.any():
                continue
            y = labels[p]
            tcp = logits[m, p].softmax(-1).gather(1, y[:, None]).squeeze(1)
            total = total + gates[m][p].mean() + F.mse_loss(conf[m, p], tcp) + F.cross_entropy(logits[m, p], y)
        return total

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        fused, _, conf, _ = self(self.inputs(features, present))
        dominant = conf.masked_fill(~present.T, -torch.inf).argmax(0)
        return BaselineOutput(fused.softmax(-1).cpu(), dominant.cpu())
