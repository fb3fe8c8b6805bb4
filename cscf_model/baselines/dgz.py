"""DGZ: Deconstructed Generation-Based Zero-Shot Model (Chen, Shen, Zhang, Torr, AAAI 2023;
cdb342/DGZ).

Core idea. Generation for GZSL is split in two: class-level generation (where a class
lies: a prototype from its semantics, made robust by Gaussian attribute augmentation,
s + eps) and instance-level generation (how samples spread around it). Synthetic unseen
features are prototype + variation. The classifier (semantics -> prototypes, cosine /
tau) trains on real seen + synthetic unseen features with a revised cross entropy: for a
real seen-class sample the unseen classes leave the softmax denominator, except the
highest-scoring one, which stays with weight lambda_1. Real seen samples thus stop
pushing every unseen class down, the main source of the seen bias.

Run as the CSCF paper runs it: one DGZ per modality, confidence selection for multimodal
samples (common.ConfidencePair).

Deviations from the original:
- Its code realises both levels inside one WGAN-GP generator (augmented attributes +
  noise). Here the levels are explicit modules: a prototype regressor on augmented
  semantics (class level, MSE to the samples, i.e. the class mean) and a conditional VAE
  on the residuals x - prototype (instance level); no adversary, one Adam optimiser
  (see zla.py for why).
- Joint step-by-step training with fresh synthetic features, SYN_PER_CLASS per unseen
  class per pass over the real data (the original's default, drawn once).
- Attribute noise of norm AUG_STD times the semantic vector's (the original's std 0.08
  is per entry of its attribute vectors, a scale our 384-d sentence vectors do not share).
- lambda_1 = 2, the authors' value for sentence semantics (CUB "sent"), the closest of
  their settings to our sentence-encoder class vectors (0.005 for attribute datasets).
"""

from __future__ import annotations

import torch

from .common import CVAE, PrototypeHead, UnimodalZSL, mlp, synthetic_labels

SYN_PER_CLASS = 100
LAMBDA_1 = 2.0  # weight of the hardest unseen class for seen samples
AUG_STD = 0.5  # norm of the attribute noise relative to the (unit) semantic vector


def revised_cross_entropy(logits: torch.Tensor, y: torch.Tensor, seen: torch.Tensor, lambda_1: float) -> torch.Tensor:
    """CE whose denominator drops the unseen classes for seen-class rows, except the
    row's top-scoring class, which enters with weight lambda_1."""
    drop = seen[y][:, None] & ~seen[None, :]  # (B, N)
    weight = (~drop).to(logits.dtype)
    top = logits.detach().argmax(1, keepdim=True)
    weight = weight.scatter(1, top, torch.where(drop.gather(1, top), lambda_1, weight.gather(1, top)))
    return (torch.logsumexp(logits + weight.log(), 1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


class DGZModel(UnimodalZSL):
    """One modality's DGZ."""

    def __init__(self, d_in: int, class_emb: torch.Tensor, seen: torch.Tensor) -> None:
        super().__init__(d_in, class_emb, seen)
        d_s = self.sem.shape[1]
        self.prototype = mlp(d_s, 256, d_in)  # class level
        self.variation = CVAE(d_in, d_s)  # instance level
        self.head = PrototypeHead(d_s, d_in)
        self.n_train = 0

    def prepare(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.n_train = len(labels)

    def _augment(self, s: torch.Tensor) -> torch.Tensor:
        # sem has norm sqrt(d_s); noise of norm AUG_STD * sqrt(d_s) is AUG_STD of it.
        return s + AUG_STD * torch.randn_like(s)

    def generate(self, y: torch.Tensor) -> torch.Tensor:
        s = self.sem[y]
        return self.prototype(self._augment(s)) + self.variation.sample(s)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.sem[y]
        proto = self.prototype(self._augment(s))
        class_loss = (proto - x).pow(2).mean()
        instance_loss = self.variation.loss(x - proto.detach(), s)
        y_syn = synthetic_labels(~self.seen_m, len(y), self.n_train, SYN_PER_CLASS)
        with torch.no_grad():
            x_syn = self.generate(y_syn)
        logits = self.head(torch.cat([x, x_syn]), self.sem)
        cls_loss = revised_cross_entropy(logits, torch.cat([y, y_syn]), self.seen_m, LAMBDA_1)
        return class_loss + instance_loss + cls_loss

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x, self.sem)

