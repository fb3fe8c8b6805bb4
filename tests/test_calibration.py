"""Seen/unseen calibration (issue 6): curve, AUSUC, margin choice, geometry keeping.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import functools
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from cscf_model import TrainConfig, TrainData, create_model
from cscf_model import train as train_model
from cscf_model.calibration import (
    Gaps,
    SeenUnseenCurve,
    cosine_rule_accuracy,
    fit_margins,
    pseudo_unseen_split,
    text_aligned,
)

SEEN3 = torch.tensor([True, True, False])  # classes 0, 1 seen; class 2 unseen


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gaps_and_accuracy_at_margins() -> None:
    # sample 0, label 0: best seen = class 0 (2.0), best unseen = class 2 (1.5): gap 0.5, right if seen
    # sample 1, label 2: best seen = class 1 (3.0), best unseen = class 2 (2.0): gap 1.0, right if unseen
    g = Gaps.of(torch.tensor([[2.0, 0.5, 1.5], [1.0, 3.0, 2.0]]), torch.tensor([0, 2]), SEEN3)
    assert g.gap.tolist() == [0.5, 1.0]
    assert g.right_if_seen.tolist() == [True, False]
    assert g.right_if_unseen.tolist() == [False, True]
    # margin 0: both predicted seen -> 1/2; 0.75: sample 0 flips to unseen (wrong), sample 1 stays seen
    # (wrong) -> 0; 2: both unseen -> sample 1 right -> 1/2. A gap equal to the margin counts as unseen.
    assert g.accuracy(torch.tensor([0.0, 0.75, 2.0, 0.5])).tolist() == [50.0, 0.0, 50.0, 0.0]


def test_curve_ausuc_and_best_margin_when_one_margin_separates() -> None:
    seen = Gaps.of(torch.tensor([[3.0, 0.0, 2.0]]), torch.tensor([0]), SEEN3)  # gap 1.0, right if seen
    unseen = Gaps.of(torch.tensor([[2.5, 0.0, 2.0]]), torch.tensor([2]), SEEN3)  # gap 0.5, right if unseen
    curve = SeenUnseenCurve.of(seen, unseen)
    # margins: below both gaps, 0 (no calibration), their midpoint, above both
    assert curve.margins.tolist() == [-0.5, 0.0, 0.75, 2.0]
    assert curve.seen_acc.tolist() == [100.0, 100.0, 100.0, 0.0]
    assert curve.unseen_acc.tolist() == [0.0, 0.0, 100.0, 100.0]
    assert curve.ausuc() == pytest.approx(100.0)  # the curve reaches (100, 100)
    assert curve.harmonic.tolist() == [0.0, 0.0, 100.0, 0.0]
    assert curve.best_margin("harmonic") == curve.best_margin("mean") == 0.75


def test_ausuc_of_a_curve_with_no_good_margin_is_zero_and_ties_prefer_small_margins() -> None:
    # the unseen-class sample needs margin >= 1.0 while the seen-class one flips at 0.5:
    # the curve goes (0, 100) -> (0, 0) -> (100, 0), enclosing nothing
    seen = Gaps.of(torch.tensor([[2.0, 0.0, 1.5]]), torch.tensor([0]), SEEN3)
    unseen = Gaps.of(torch.tensor([[3.0, 0.0, 2.0]]), torch.tensor([2]), SEEN3)
    curve = SeenUnseenCurve.of(seen, unseen)
    assert curve.ausuc() == pytest.approx(0.0)
    # the mean is 50 at margins -0.5, 0 and 2; no calibration (0) wins the tie
    assert curve.best_margin("mean") == 0.0


def test_best_margin_respects_the_seen_accuracy_budget() -> None:
    # seen-class samples with gaps 1, 2, 3, 4 (right if seen); unseen-class ones with gaps 0.5,
    # 1.5, 2.5, 3.5 (right if unseen). Margin t keeps the seen samples with gap > t.
    logits = lambda g: torch.tensor([[g, 0.0, 0.0]])  # noqa: E731 - best unseen logit 0, gap g
    seen = Gaps.of(torch.cat([logits(g) for g in (1.0, 2.0, 3.0, 4.0)]), torch.zeros(4, dtype=torch.long), SEEN3)
    unseen = Gaps.of(torch.cat([logits(g) for g in (0.5, 1.5, 2.5, 3.5)]), torch.full((4,), 2), SEEN3)
    curve = SeenUnseenCurve.of(seen, unseen)
    # (seen, unseen) at t = 0: (100, 0); 0.75: (100, 25); 1.25: (75, 25); 1.75: (75, 50); ...
    # the mean peaks at 62.5 for t in {0.75, 1.75, 2.75, 3.75}: the tie goes to 0.75
    assert curve.best_margin("mean") == 0.75
    # a budget of 20 points keeps seen >= 80: only margins below 1.0
    assert curve.best_margin("mean", max_seen_drop=20.0) == 0.75
    assert curve.best_margin("mean", max_seen_drop=0.0) == 0.75  # 0.75 keeps seen at 100
    assert curve.best_margin("harmonic", max_seen_drop=30.0) == 1.75  # seen 75, unseen 50 -> H 60


def test_without_samples_to_judge_by_the_margin_stays_0() -> None:
    no_seen = Gaps.of(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), SEEN3)
    unseen = Gaps.of(torch.tensor([[2.5, 0.0, 2.0]]), torch.tensor([2]), SEEN3)
    for criterion in ("mean", "harmonic"):
        assert SeenUnseenCurve.of(no_seen, unseen).best_margin(criterion, 3.0) == 0.0


def test_pseudo_unseen_split_holds_out_whole_classes() -> None:
    labels = [torch.arange(8).repeat_interleave(10), torch.arange(8, 12).repeat_interleave(10)]
    data = TrainData([torch.randn(80, 3), torch.randn(40, 5)], labels)
    seen = torch.zeros(2, 12, dtype=torch.bool)
    seen[0, :8], seen[1, 8:] = True, True
    fit, pseudo, val = pseudo_unseen_split(data, seen, holdout=0.25, val_share=0.2, seed=0)
    for m, (n_seen, n_out) in enumerate(((8, 2), (4, 1))):
        held = (seen[m] & ~pseudo[m]).nonzero().squeeze(1)
        assert len(held) == n_out and int(pseudo[m].sum()) == n_seen - n_out
        assert not torch.isin(fit.labels[m], held).any()  # never trained on
        assert (torch.isin(val.labels[m], held).sum() == 10 * n_out)  # every sample of them validates
        assert len(fit.labels[m]) + len(val.labels[m]) == len(labels[m])
        assert not (pseudo[m] & ~seen[m]).any()


def test_pseudo_unseen_split_refuses_a_modality_with_one_class() -> None:
    data = TrainData([torch.randn(5, 2), torch.randn(5, 2)], [torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    seen = torch.tensor([[True, False], [False, True]])
    with pytest.raises(ValueError, match="modality 0 saw 1 class"):
        pseudo_unseen_split(data, seen, 0.25, 0.2, 0)


def _aligned_data(n_classes: int = 12, per_class: int = 30, seed: int = 0) -> tuple[torch.Tensor, TrainData, TrainData]:
    """Modality 0 = class vectors plus noise (shares the semantic space); modality 1 = a random
    projection of them (carries the class, not the space). A sees classes 0-5, B sees 6-11."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n_classes, 32, generator=g), dim=-1)
    proj = torch.randn(32, 20, generator=g)

    def views(labels: torch.Tensor) -> list[torch.Tensor]:
        x = emb[labels] + 0.12 * torch.randn(len(labels), 32, generator=g)
        return [x, x @ proj]

    half = n_classes // 2
    train_a = torch.arange(half).repeat_interleave(per_class)
    train_b = torch.arange(half, n_classes).repeat_interleave(per_class)
    train = TrainData([views(train_a)[0], views(train_b)[1]], [train_a, train_b])
    test_y = torch.arange(n_classes).repeat_interleave(per_class)
    test = TrainData(views(test_y), [test_y, test_y])
    return emb, train, test


def test_text_aligned_detects_the_modality_sharing_the_semantic_space() -> None:
    emb, train, _ = _aligned_data()
    assert text_aligned(train, emb).tolist() == [True, False]
    assert cosine_rule_accuracy(torch.randn(50, 32), torch.zeros(50, dtype=torch.long), emb) < 30


def test_an_aligned_modality_starts_at_the_cosine_rule() -> None:
    emb, train, _ = _aligned_data()
    seen = torch.zeros(2, 12, dtype=torch.bool)
    seen[0, :6], seen[1, 6:] = True, True
    model = create_model("B+O+D+C", [32, 20], emb, seen, torch.tensor([True, False])).eval()
    model.fit_input_stats(train.features)
    x = train.features[0][:5]
    expected = model.scale * F.normalize(x, dim=-1) @ emb.T  # eq. 2 with s_hat = x
    assert torch.allclose(model.modality_logits(0, x), expected.expand(4, -1, -1), atol=1e-5)
    not_aligned = create_model("B+O+D+C", [32, 20], emb, seen, torch.tensor([True, False]), keep_geometry=False)
    assert not not_aligned.aligned.any()


def test_margin_is_subtracted_from_seen_classes_of_unimodal_samples_only() -> None:
    emb, train, _ = _aligned_data()
    seen = torch.zeros(2, 12, dtype=torch.bool)
    seen[0, :6], seen[1, 6:] = True, True
    model = create_model("B+O+D+C", [32, 20], emb, seen).eval()
    feats = [train.features[0][:4], torch.randn(4, 20)]
    present = torch.tensor([[True, False], [False, True], [True, True], [True, True]])
    raw = model(feats, present)
    model.margin.copy_(torch.tensor([2.0, -1.0]))
    cal = model(feats, present)
    shift = torch.stack([2.0 * seen[0], -1.0 * seen[1]])  # (M, N)
    assert torch.allclose(cal.logits[0, 0], raw.logits[0, 0] - shift[0], atol=1e-5)  # A alone
    assert torch.allclose(cal.logits[1, 1], raw.logits[1, 1] - shift[1], atol=1e-5)  # B alone
    assert torch.allclose(cal.fused[0], raw.fused[0] - shift[0], atol=1e-5)
    # bimodal samples: DMSS and CSMF read the raw logits
    assert torch.equal(cal.logits[:, 2:], raw.logits[:, 2:])
    assert torch.equal(cal.u[:, 2:], raw.u[:, 2:]) and torch.equal(cal.fused[2:], raw.fused[2:])


@functools.cache
def _train_aligned(keep_geometry: bool) -> tuple[torch.Tensor, TrainData, TrainData, torch.Tensor, list[float], torch.Tensor]:
    """Train CSCF on _aligned_data and choose its margins on training data; returns
    (seen, train, test, modality A's raw test logits, margins, text_aligned)."""
    emb, train, test = _aligned_data()
    seen = torch.zeros(2, 12, dtype=torch.bool)
    seen[0, :6], seen[1, 6:] = True, True
    cfg = TrainConfig(epochs=15, batch_size=64, lr=3e-3, seed=0, device="cpu")
    aligned = text_aligned(train, emb)

    def make(s: torch.Tensor) -> torch.nn.Module:
        torch.manual_seed(0)
        return create_model("B+O+D+C", [32, 20], emb, s, aligned, keep_geometry=keep_geometry)

    model, _ = train_model(make(seen), train, cfg)
    margins = fit_margins(make, train, seen, cfg, holdout=0.25, criterion="mean", max_seen_drop=None, aligned=aligned)
    with torch.no_grad():
        raw = model.modality_logits(0, test.features[0]).mean(0)
    return seen, train, test, raw, margins, aligned


def _acc(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> float:
    return 100 * float((logits[rows].argmax(-1) == labels[rows]).float().mean())


def test_keeping_the_geometry_keeps_the_transfer_of_an_aligned_modality() -> None:
    """Modality A's features share the class space; mapped as x + g f(x) it still names
    unseen classes after training on seen ones, while a freely learnt mapper names none."""
    seen, _, test, kept, _, aligned = _train_aligned(keep_geometry=True)
    _, _, _, learnt, _, _ = _train_aligned(keep_geometry=False)
    y = test.labels[0]
    unseen = ~seen[0, y]
    assert aligned.tolist() == [True, False]
    assert _acc(kept, y, unseen) > 80
    assert _acc(learnt, y, unseen) < 10
    assert _acc(kept, y, ~unseen) > 90 and _acc(learnt, y, ~unseen) > 90


def test_margin_chosen_on_training_data_brings_unseen_classes_back() -> None:
    """Without geometry keeping A predicts no unseen class at margin 0; the margin chosen on
    pseudo-unseen training classes alone restores part of them."""
    seen, _, test, raw, margins, _ = _train_aligned(keep_geometry=False)
    y = test.labels[0]
    unseen = ~seen[0, y]
    calibrated = raw - margins[0] * seen[0]
    assert margins[0] > 0
    assert _acc(calibrated, y, unseen) > _acc(raw, y, unseen) + 20


def test_margin_rule_gives_harmonic_to_aligned_modalities_only() -> None:
    from cscf_model.calibration import margin_rule

    assert margin_rule("harmonic", 3.0, aligned=True) == ("harmonic", None)
    assert margin_rule("harmonic", 3.0, aligned=False) == ("mean", 3.0)
    assert margin_rule("mean", 3.0, aligned=True) == ("mean", 3.0)


def test_gaps_in_blocks_and_curve_of_selected_rows_match_the_whole_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gaps.of reads ROWS samples at a time and from_logits selects `rows` on the gaps, not on
    the logits: both must give what masking all the logits at once gives."""
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 3, generator=gen), torch.randint(0, 3, (50,), generator=gen)
    rows = torch.rand(50, generator=gen) < 0.7
    monkeypatch.setattr("cscf_model.calibration.ROWS", 7)
    blocked = SeenUnseenCurve.from_logits(logits, labels, SEEN3, rows)
    own = SEEN3[labels[rows]]
    lo, y = logits[rows], labels[rows]
    best_seen, best_unseen = lo.masked_fill(~SEEN3, -torch.inf).max(-1), lo.masked_fill(SEEN3, -torch.inf).max(-1)
    gap = best_seen.values - best_unseen.values
    assert torch.equal(blocked.seen.gap, gap[own]) and torch.equal(blocked.unseen.gap, gap[~own])
    assert torch.equal(blocked.seen.right_if_seen, (best_seen.indices == y)[own])
    assert torch.equal(blocked.unseen.right_if_unseen, (best_unseen.indices == y)[~own])
