"""The routing ceiling and routing accuracy on hand-set logits, three modalities with overlapping seen sets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cscf_model import CSCFOutput, Encoded, TrainData
from tasks.training import mmhcl_data
from tasks.evaluation.scoring import cscf_scorer, encode_test, evaluate_method, routing_ceiling

# Classes 0, 1, 2; modality a saw {0, 2}, b saw {1}, c saw {2}: class 2 is seen by a and c.
SEEN = torch.tensor([[True, False, True], [False, True, False], [False, False, True]])
LABELS = torch.tensor([0, 1, 2])
# Per modality (rows) and sample (columns): the logits the stub model returns.
LOGITS = torch.tensor([
    [[5.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 1.0]],  # a: right on samples 0 and 2, wrong on 1
    [[0.0, 6.0, 0.0], [0.0, 3.0, 0.0], [0.0, 9.0, 0.0]],  # b: always says class 1
    [[0.0, 0.0, 7.0], [0.0, 0.0, 1.0], [3.0, 0.0, 2.0]],  # c: says 2, 2, 0
])


class HandSetModel(nn.Module):
    """Encodes a sample as its LOGITS; DMSS picks modality b everywhere (lowest u)."""

    def encode_for_scoring(self, features: list[torch.Tensor]) -> Encoded:
        rows = features[0][:, 0].long()  # the test set stores each sample's row index as its feature
        return Encoded(LOGITS[:, rows], None, None)

    def fuse(self, enc: Encoded, present: torch.Tensor, fusion: str | None = None, router: str | None = None) -> CSCFOutput:
        n = enc.raw.shape[1]
        u = torch.tensor([1.0, 0.0, 2.0])[:, None].expand(3, n).masked_fill(~present.T, torch.inf)
        dominant = u.argmin(0)
        return CSCFOutput(None, torch.zeros_like(enc.raw), enc.raw, u, dominant, enc.raw[dominant, torch.arange(n)])


def _data() -> mmhcl_data.MMHCLData:
    index = torch.arange(3, dtype=torch.float32)[:, None]
    test = mmhcl_data.TestSet(["s0", "s1", "s2"], LABELS, SEEN[:, LABELS].T, [index, index, index], torch.ones(3, 3, dtype=torch.bool))
    empty = TrainData([torch.zeros(0, 1)] * 3, [torch.zeros(0, dtype=torch.long)] * 3)
    return mmhcl_data.MMHCLData(["c0", "c1", "c2"], ["a", "b", "c"], torch.eye(3), SEEN, empty, test)


def test_routing_ceiling_averages_the_modalities_that_saw_the_true_class() -> None:
    model, data = HandSetModel(), _data()
    ceiling = routing_ceiling(model, encode_test(model, data), data)
    # s0 (class 0, seen by a): a alone -> 0, right. s1 (class 1, seen by b): b alone -> 1, right.
    # s2 (class 2, seen by a and c): mean of a and c = [1.5, 0, 1.5] -> tie, argmax takes class 0: wrong.
    assert ceiling["all"] == pytest.approx(200 / 3)
    assert ceiling["all[a]"] == 100.0 and ceiling["all[b]"] == 100.0 and ceiling["all[a+c]"] == 0.0
    assert "a_s" not in ceiling  # unimodal subsets have nothing to route


def test_routing_accuracy_counts_any_modality_that_saw_the_class() -> None:
    model, data = HandSetModel(), _data()
    _, _, routing = evaluate_method(cscf_scorer(model, encode_test(model, data), "csmf"), data)
    # b dominates every sample: right only for s1 (class 1); s2's class was seen by a and c, not b.
    assert routing["all"] == pytest.approx(100 / 3)
