"""bf16 storage of training vectors with fp32 math (issue 22): every statistic training reads
from the vectors equals the fp32 computation on the same (bf16-rounded) values."""

from __future__ import annotations

import pytest
import torch

from cscf_model import TrainData, create_model
from cscf_model.calibration import cosine_rule_accuracy
from cscf_model.data import ROWS, VARIANCE_FLOOR, column_stats, float_blocks
from cscf_model.router import fit_router, standardised


def test_column_stats_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    mean, std = column_stats(x)
    # column 0: mean 3, squared deviations 4 + 0 + 4 over n - 1 = 2 -> std 2;
    # column 1: mean 4, squared deviations 4 + 4 + 16 over 2 -> std sqrt(12)
    assert torch.allclose(mean, torch.tensor([3.0, 4.0]))
    assert torch.allclose(std, torch.tensor([2.0, 12.0 ** 0.5]))


def test_bf16_storage_gives_the_fp32_statistics_of_its_values() -> None:
    g = torch.Generator().manual_seed(0)
    stored = (torch.randn(ROWS + 37, 5, generator=g) * 3 + 100).bfloat16()  # more than one block
    values = stored.float()
    assert [b.dtype for b in float_blocks(stored)] == [torch.float32] * 2
    mean, std = column_stats(stored)
    assert mean.dtype == torch.float32
    assert torch.allclose(mean, values.mean(0), atol=1e-4) and torch.allclose(std, values.std(0), rtol=1e-4)
    m16, s16, z16 = standardised(stored)
    m32, s32, z32 = standardised(values)
    assert z16.dtype == torch.float32 and torch.equal(m16, m32) and torch.equal(s16, s32) and torch.equal(z16, z32)
    assert torch.allclose(z32.mean(0), torch.zeros(5), atol=1e-4)


def test_model_and_router_read_bf16_vectors_as_their_fp32_values() -> None:
    g = torch.Generator().manual_seed(1)
    labels = [torch.arange(40) % 3, 3 + torch.arange(30) % 2]
    centres = torch.randn(5, 6, generator=g) * 3
    stored = [(centres[y] + torch.randn(len(y), 6, generator=g)).bfloat16() for y in labels]
    values = [x.float() for x in stored]
    class_emb = torch.randn(5, 6, generator=g)
    seen = torch.tensor([[True, True, True, False, False], [False, False, False, True, True]])
    model = create_model("CSCF", [6, 6], class_emb, seen, torch.tensor([False, False])).eval()
    model.fit_input_stats(stored)
    assert torch.allclose(model.in_mean_0, values[0].mean(0), atol=1e-5)
    for m in range(2):
        assert torch.allclose(model.mean_logits(m, stored[m]), model.modality_logits(m, values[m]).mean(0), atol=1e-5)
    assert cosine_rule_accuracy(stored[0], labels[0], class_emb) == cosine_rule_accuracy(values[0], labels[0], class_emb)
    a = fit_router(TrainData(stored, labels), seen, 0.34, seed=0).state_dict()
    b = fit_router(TrainData(values, labels), seen, 0.34, seed=0).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_constant_dimension_stored_in_bf16_does_not_blow_up_the_model() -> None:
    """bf16 rounds a constant training value c (-0.0591 in a digits pixel) to c + delta; the
    test sample, in fp32, shows c. Divided by the old absolute scale 1e-6 that offset read as
    about 100 standard deviations and decided every prediction; the variance floor reads it
    as a hundredth of one."""
    g = torch.Generator().manual_seed(2)
    y = torch.arange(60) % 3
    x = torch.cat([torch.randn(60, 4, generator=g) + y[:, None], torch.full((60, 1), -0.05907756)], 1)
    stored = x.bfloat16()
    model = create_model("CSCF", [5, 5], torch.randn(3, 5, generator=g), torch.ones(2, 3, dtype=torch.bool),
                         torch.tensor([False, False]))
    model.fit_input_stats([stored, stored])
    var = stored.float()[:, :4].double().var(0)
    assert float(model.in_std_0[-1]) == pytest.approx((VARIANCE_FLOOR * float(var.sum()) / 5) ** 0.5, rel=1e-4)
    z = (x - model.in_mean_0) / model.in_std_0  # the fp32 values, as a test sample shows them
    assert float(z[:, -1].abs().max()) < 0.1


def test_row_blocks_standardise_as_their_concatenation() -> None:
    """The router reads a modality's fit and validation samples as two blocks, never
    concatenated: the statistics and z must be those of the concatenated matrix, bit for bit."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(ROWS + 5, 4, generator=gen).bfloat16(), torch.randn(9, 4, generator=gen).bfloat16()
    whole, blocks = standardised(torch.cat([a, b])), standardised([a, b])
    assert all(torch.equal(w, p) for w, p in zip(whole, blocks))
