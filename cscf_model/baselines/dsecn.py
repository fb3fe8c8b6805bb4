"""DSECN: Diverse Semantics from External Class Names (Li, Luo, Wang, Du, CVPR 2024,
"Improving Generalized Zero-Shot Learning by Exploring the Diverse Semantics from
External Class Names"; li-yapeng/DSECN).

Core idea. An embedding-based GZSL model: a semantic-to-visual network S2V maps each
class's semantic vector to a prototype in feature space and a sample is classified by
scaled cosine to the prototypes (25 cos). S2V trains with cross entropy over the seen
classes only; unseen prototypes come from S2V's generalisation. Unseen classes that are
*dissimilar* to every seen class are where such models fail, so DSECN also trains S2V on
the semantics of many external class names (ImageNet-1k, WordNet hypernyms), each
required to land where a pretrained network's classification head recognises it: S2V
sees far more diverse semantics than the seen classes alone provide.

Run as the CSCF paper runs it: one DSECN per modality, confidence selection for bimodal
samples (common.ConfidencePair).

Deviation from the original: the external-name terms need a large list of extra class
names and a pretrained classification head living in *our* feature space; neither is
available offline for arbitrary user features. As the proxy the CSCF paper's description
allows ("semantics enriched by extra class names"), each class vector is enriched with
its K_NEIGHBOURS nearest class vectors (cosine-weighted, mixed in with weight BLEND)
before S2V sees it, so every class's semantics carries its neighbourhood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import UnimodalZSL

K_NEIGHBOURS = 3
BLEND = 0.5
SCALE = 25.0  # 5 * x/|x| . 5 * p/|p| in the original
HIDDEN = 512


def enrich(class_emb: torch.Tensor, k: int, blend: float) -> torch.Tensor:
    """c_i + blend * (cosine-weighted mean of its k nearest other class vectors), (N, d)."""
    c = F.normalize(class_emb.float(), dim=-1)
    sim = (c @ c.T).fill_diagonal_(-torch.inf)
    k = min(k, len(c) - 1)
    if k < 1:
        return class_emb
    top, idx = sim.topk(k, dim=1)
    w = top.clamp_min(0)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-8)
    return c + blend * torch.einsum("nk,nkd->nd", w, c[idx])


class DSECNModel(UnimodalZSL):
    """One modality's DSECN."""

    def __init__(self, d_in: int, class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(d_in, enrich(class_emb, K_NEIGHBOURS, BLEND), seen)
        d_s = self.sem.shape[1]
        block = lambda a, b: [nn.Linear(a, b), nn.Dropout(0.3), nn.LayerNorm(b), nn.ReLU()]  # noqa: E731
        self.s2v = nn.Sequential(
            *block(d_s, HIDDEN), *block(HIDDEN, HIDDEN), nn.Linear(HIDDEN, d_in), nn.LayerNorm(d_in)
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return SCALE * F.normalize(x, dim=-1) @ F.normalize(self.s2v(self.sem), dim=-1).T

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x).masked_fill(~self.seen_m, -torch.inf), y)

