"""LMVCAT (Liu, Jia, Wen, Xu, Lu, AAAI 2023, "Incomplete Multi-View Multi-Label Learning
via Label-Guided Masked View- and Category-Aware Transformers"; justsmart/LMVCAT).

Core idea.
- Masked view-aware transformer: each view is embedded into a token; a transformer
  encoder mixes the view tokens with missing views masked out of attention, so an
  absent view never contaminates a present one.
- Fusion: learned view weights w_v, a softmax over the present views of w_v^gamma, pool
  the view tokens into one sample token with its own classifier over all classes.
- Category-aware transformer: one learnable token per class; the class tokens interact
  (label correlations) and read the sample, and each class token gets its own
  classifier, giving that class's logit.
- Label guidance: per view, the similarity (1 + cos) / 2 of two samples' view tokens is
  pushed towards "share a label" by a BCE, over pairs where both have the view.
Loss: CE(sample token) + ALPHA * label-guided term + BETA * CE(class tokens).

MMHCL: classifiers over all N classes; each training sample has one view, the other is
masked. Unseen classes of a view are never its labels, so A_u and B_u are ~0.

Deviations from the original:
- Single-label data: softmax cross entropy replaces the multi-label BCE heads, and
  "share a label" is label equality.
- The category transformer is factorised for CPU budgets. The original runs a full
  encoder layer over [sample token, N class tokens] for every sample, O(B N D^2) with
  its feed-forward block. Here the class tokens pass one encoder layer among
  themselves (sample-independent, once per batch), then attend to the sample's present
  view tokens (one attention step with a residual, no feed-forward or norm, so the
  per-class linear classifiers can be applied in O(B N M D) without forming B x N
  tokens). The test prediction averages the
  probabilities of the sample-token and class-token heads (the original reads the
  sample token, which in its design has attended to the class tokens).
- d_model 128 and two view-transformer layers (the original: 512 and 6); Adam as
  everywhere here (the original: SGD, lr 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Baseline, BaselineOutput, key_padding, transformer

D_MODEL, HEADS, VIEW_LAYERS, DROPOUT = 128, 4, 2, 0.1
ALPHA, BETA, GAMMA = 10.0, 0.1, 2  # the repository's grid values


def label_guided_loss(tokens: torch.Tensor, labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """BCE between (1 + cos)/2 of two samples' view tokens and [same label], per view,
    over pairs of distinct samples that both have the view.  tokens (B, V, D)."""
    per_view = []
    for v, rows in enumerate(present.T):
        if rows.sum() < 2:
            continue
        z, y = F.normalize(tokens[rows, v], dim=-1), labels[rows]
        sim = ((1 + z @ z.T) / 2).clamp(1e-5, 1 - 1e-5)
        off_diagonal = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
        per_view.append(F.binary_cross_entropy(sim[off_diagonal], (y[:, None] == y[None, :])[off_diagonal].float()))
    return 0.5 * torch.stack(per_view).mean() if per_view else tokens.new_zeros(())


class LMVCAT(Baseline):
    def __init__(self, input_dims: list[int], class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(input_dims, class_emb, seen)
        n, m = self.n_classes, len(input_dims)
        self.embed = nn.ModuleList(
            nn.Sequential(nn.Linear(d, D_MODEL), nn.GELU(), nn.Dropout(DROPOUT), nn.Linear(D_MODEL, D_MODEL))
            for d in input_dims
        )
        self.view_transformer = transformer(D_MODEL, HEADS, VIEW_LAYERS, DROPOUT)
        self.category_transformer = transformer(D_MODEL, HEADS, 1, DROPOUT)
        self.view_weight = nn.Parameter(torch.empty(m))
        self.class_tokens = nn.Parameter(torch.empty(n, D_MODEL))
        self.query, self.key, self.value = (nn.Linear(D_MODEL, D_MODEL) for _ in range(3))
        self.class_w = nn.Parameter(torch.empty(n, D_MODEL))  # one linear classifier per class token
        self.class_b = nn.Parameter(torch.empty(n))
        self.head = nn.Linear(D_MODEL, n)
        self.init_extra()

    def init_extra(self) -> None:
        with torch.no_grad():  # the original starts from a softmax of Gaussian draws
            self.view_weight.copy_(torch.randn(len(self.view_weight)).softmax(0))
        nn.init.xavier_uniform_(self.class_tokens)
        nn.init.xavier_uniform_(self.class_w)
        nn.init.zeros_(self.class_b)

    def view_weights(self, present: torch.Tensor) -> torch.Tensor:
        """(B, M) softmax of w^gamma over each sample's present views."""
        w = self.view_weight.pow(GAMMA).expand(len(present), -1)
        return w.masked_fill(~present, -torch.inf).softmax(-1)

    def class_logits(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Class tokens (after attending to each other) attend to the view tokens (B, M, D);
        -> per-class logits (B, N), each from its own token's linear classifier w_n."""
        b, m, _ = tokens.shape
        dh = D_MODEL // HEADS
        cls = self.category_transformer(self.class_tokens[None])[0]  # (N, D), same for all samples
        q = self.query(cls).view(-1, HEADS, dh)  # (N, H, dh)
        k = self.key(tokens).view(b, m, HEADS, dh)
        v = self.value(tokens).view(b, m, HEADS, dh)
        att = torch.einsum("nhd,bmhd->bnhm", q, k) / dh**0.5
        att = att.masked_fill(key_padding(present)[:, None, None, :], -torch.inf).softmax(-1)
        # logit_n = w_n . (cls_n + read_n) with read_n = concat_h sum_m att[b,n,h,m] v[b,m,h];
        # by linearity w_n . read_n = sum_{h,m} att[b,n,h,m] (w_n^h . v[b,m,h]), which never
        # forms the (B, N, D) tensor of reads.
        w_dot_v = torch.einsum("nhd,bmhd->bnhm", self.class_w.view(-1, HEADS, dh), v)
        return (cls * self.class_w).sum(-1) + (att * w_dot_v).sum((2, 3)) + self.class_b

    def forward(self, feats: list[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> sample-token logits (B, N), class-token logits (B, N), view tokens (B, M, D)."""
        tokens = torch.stack([e(x) for e, x in zip(self.embed, feats)], 1)  # (B, M, D)
        tokens = self.view_transformer(tokens, src_key_padding_mask=key_padding(present))
        fused = (tokens * self.view_weights(present)[..., None]).sum(1)  # (B, D)
        return self.head(fused), self.class_logits(tokens, present), tokens

    def loss(self, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, epoch: int) -> torch.Tensor:
        logits, per_class, tokens = self(feats, present)
        return (
            F.cross_entropy(logits, labels)
            + ALPHA * label_guided_loss(tokens, labels, present)
            + BETA * F.cross_entropy(per_class, labels)
        )

    @torch.no_grad()
    def predict(self, features: list[torch.Tensor], present: torch.Tensor) -> BaselineOutput:
        present = present.to(self.class_emb.device)
        logits, per_class, _ = self(self.inputs(features, present), present)
        dominant = self.view_weights(present).argmax(1)
        return BaselineOutput(((logits.softmax(-1) + per_class.softmax(-1)) / 2).cpu(), dominant.cpu())
