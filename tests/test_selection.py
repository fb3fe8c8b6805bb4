"""Choices made on validation samples (cscf_model/selection.py), on logits the test sets.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from cscf_model import Encoded, create_model
from cscf_model.router import GateRouter, ModalityGate
from cscf_model.selection import FusionScore, alternate_halves, apply_selection, scaled_gates, select_on_validation

# Three classes, modality A saw class 0, B saw classes 1 and 2. Class vectors: c0 = e0,
# c1 = e1, c2 = (e0 + e1)/sqrt 2, so cos(c2, c0) = cos(c2, c1) = 0.707 and cos(c0, c1) = 0.
SEEN = torch.tensor([[True, False, False], [False, True, True]])
CLASS_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
# Gate logits g_A = ln 3, g_B = 0 at base rates 1/2: P(A-only) / P(B-only) = prior ratio (1/3) / (2/3)
# times e^(g_A - g_B) = 1.5, so P(A saw the class) = 0.6 > P(B saw it) = 0.4 and A dominates.
GATES = [math.log(3.0), 0.0]


def fixed_router(base_rates: tuple[float, float] = (0.5, 0.5)) -> GateRouter:
    """A learned router whose gates the tests never evaluate (they give the gate logits): what
    CSCF.route and the product of experts read from it are the base rates (1/2 unless given),
    unit evidence weights and unit temperatures."""
    def gate(base_rate: float) -> ModalityGate:
        return ModalityGate(1, in_mean=torch.zeros(2), in_std=torch.ones(2), class_means=torch.zeros(1, 2),
                            precision=torch.eye(2), bank=torch.zeros(1, 2), feat_mean=torch.zeros(2),
                            feat_std=torch.ones(2), weights=torch.zeros(3), base_rate=torch.tensor(base_rate))
    return GateRouter([gate(r) for r in base_rates])


def make_model(margins: tuple[float, float] = (0.0, 0.0), base_rates: tuple[float, float] = (0.5, 0.5),
               **config: object):
    # the router's fusion as the pattern posterior plus the mean logits ("prior"): the
    # accuracies below are worked out for it
    model = create_model("CSCF", [2, 2], CLASS_EMB, SEEN, **{"gate_mix": "prior", **config}).eval()
    model.router = fixed_router(base_rates)
    model.margin.copy_(torch.tensor(margins))
    return model


def encoded(raw: list[list[list[float]]], gates: list[list[float]] | None = None) -> Encoded:
    """Per sample, the two modalities' raw logits and gate logits (GATES for every sample unless given)."""
    raw_t = torch.tensor(raw, dtype=torch.float32).transpose(0, 1)  # (B, M, N) -> (M, B, N)
    gate_logit = torch.tensor(GATES)[:, None].expand(2, raw_t.shape[1]) if gates is None else torch.tensor(gates).T
    return Encoded(raw_t, None, gate_logit.float().clone())


BOTH = [True, True]


def test_csmf_at_the_top_k_that_gets_it_right_beats_the_router_fusion() -> None:
    # One bimodal sample of class 0: A = (4, 0, 0), B = (0, 6, 0).
    # gate ("prior"): mean (2, 3, 0) + log P(pattern): class 0 gains log 0.6, classes 1-2 log 0.4:
    #   2 - 0.51 < 3 - 0.92: class 1, wrong.
    # csmf, A dominant: A + S^B (B - mean B) with B centred (-2, 4, -2). S^B keeps B's classes {1, 2}:
    #   k=1: rows (c2, c1, c2) -> (-2, 4, -2): fused (2, 4, -2), class 1, wrong.
    #   k=2: row 0 still c2 alone (cos(c0, c1) = 0 is clipped), row 1 (0.586 c1 + 0.414 c2) -> 1.52,
    #   row 2 (0.414 c1 + 0.586 c2) -> 0.48: fused (2, 1.52, 0.48), class 0, right.
    #   k=3 keeps as many classes as B saw, 2: the same as k=2, so k=2 (first of the tie) wins.
    model = make_model()
    sel = select_on_validation(model, encoded([[[4, 0, 0], [0, 6, 0]]]), torch.tensor([BOTH]), torch.tensor([0]),
                               gate_mixes=())
    assert sel.fusion_scores == [FusionScore("gate", None, "prior", 0.0), FusionScore("csmf", 1, None, 0.0),
                                 FusionScore("csmf", 2, None, 100.0),
                                 FusionScore("csmf", 3, None, 100.0)]  # grid capped at 3
    assert (sel.fusion, sel.top_k, sel.multimodal_samples) == ("csmf", 2, 1)
    assert model.config.top_k == 3  # the model is left as it was
    apply_selection(model, sel)
    assert (model.config.fusion, model.config.top_k) == ("csmf", 2)
    out = model.fuse(encoded([[[4, 0, 0], [0, 6, 0]]]), torch.tensor([BOTH]))
    assert out.fused.argmax(-1).tolist() == [0]


def test_router_fusion_wins_where_csmf_follows_a_wrong_dominant_modality() -> None:
    # Class 0, A = (2, 3, 0), B = (5, 0, 0). gate: mean (3.5, 1.5, 0) + log P: class 0. csmf: A dominant,
    # B centred (3.33, -1.67, -1.67) reaches class 0 only through row 0's c2: every row of S^B (B)
    # is -1.67 at every k, fused (0.33, 1.33, -1.67): class 1. The router's fusion stays.
    sel = select_on_validation(make_model(), encoded([[[2, 3, 0], [5, 0, 0]]]), torch.tensor([BOTH]),
                               torch.tensor([0]), gate_mixes=())
    assert [s.accuracy for s in sel.fusion_scores] == [100.0, 0.0, 0.0, 0.0]
    assert (sel.fusion, sel.top_k) == ("gate", 3)


def test_a_tie_keeps_the_model_as_trained_and_one_modality_samples_do_not_vote() -> None:
    # Sample 0 (both, class 0): A = (5, 0, 0), B = (0, 0, 0): right under every fusion.
    # Sample 1 shows A alone: whatever the fusion, one modality is scored by calibrated stacking.
    sel = select_on_validation(make_model(), encoded([[[5, 0, 0], [0, 0, 0]], [[0, 5, 0], [0, 0, 0]]]),
                               torch.tensor([BOTH, [True, False]]), torch.tensor([0, 0]), gate_mixes=())
    assert [s.accuracy for s in sel.fusion_scores] == [100.0] * 4
    assert (sel.fusion, sel.top_k, sel.multimodal_samples) == ("gate", 3, 1)
    # a model trained with CSMF at top-k 5 is the default then: it comes first and keeps the tie
    sel = select_on_validation(make_model(fusion="csmf", top_k=5), encoded([[[5, 0, 0], [0, 0, 0]]]),
                               torch.tensor([BOTH]), torch.tensor([0]))
    assert sel.fusion_scores[0] == FusionScore("csmf", 5, None, 100.0) and (sel.fusion, sel.top_k) == ("csmf", 5)
    assert sel.gate_mix == "prior"  # not chosen: the model's own stays


def test_the_product_of_experts_is_chosen_where_it_is_right_and_the_pattern_prior_is_not() -> None:
    # The sample of the first test (class 0, A = (4, 0, 0), B = (0, 6, 0)), every gate mix.
    # prior: wrong (above). product: gates moved from base rate 1/2 to the share of classes each
    # saw: g_A = ln 3 + logit(1/3) = ln 1.5 -> 0.6, g_B = 0 + logit(2/3) = ln 2 -> 2/3. A (not
    # aligned) gives q_A = (0.6, 0.2, 0.2); B gives 1/3 to class 0, the class it never saw, and
    # 2/3 softmax(6, 0) = (0.665, 0.0016) to classes 1-2. Product: (0.2, 0.133, 0.0003): class 0.
    model = make_model()
    sample = encoded([[[4, 0, 0], [0, 6, 0]]]), torch.tensor([BOTH]), torch.tensor([0])
    sel = select_on_validation(model, *sample, top_ks=(1,))
    assert sel.fusion_scores == [FusionScore("gate", None, "prior", 0.0), FusionScore("gate", None, "product", 100.0),
                                 FusionScore("csmf", 1, None, 0.0)]
    assert (sel.fusion, sel.gate_mix) == ("gate", "product")
    assert model.fuse(*sample[:2]).fused.argmax(-1).tolist() == [1]  # the model as trained: prior
    apply_selection(model, sel)
    assert model.config.gate_mix == "product" and model.fuse(*sample[:2]).fused.argmax(-1).tolist() == [0]


# Two samples of class 0 (A saw it) and two of class 1 (B saw it), both modalities shown, all
# logits 0 but B's (0, 1, 0) on class 1. A's gate reads 5 on class 0 and 3 on class 1: it
# ranks them right and says "seen" on both. B's gate reads 0 throughout.
GATE_RAW = [[[0, 0, 0], [0, 0, 0]]] * 2 + [[[0, 0, 0], [0, 1, 0]]] * 2
GATE_LOGITS = [[5.0, 0.0], [5.0, 0.0], [3.0, 0.0], [3.0, 0.0]]
GATE_LABELS = torch.tensor([0, 0, 1, 1])


def test_gates_scaled_on_validation_data_are_adopted_where_they_decide_better() -> None:
    # As trained ("prior"): P(A-only) / P(B-only) = (1/3) / (2/3) * e^(g_A) (g_B = 0, base rates
    # 1/2), on class 1 sigmoid(3 - ln 2) = 0.909: class 0 scores ln 0.909 = -0.10, class 1
    # 0.5 + ln 0.091 = -1.90, wrong; class 0 is right. 50%.
    # Platt on A's logits (5, 5, 3, 3) against (seen, seen, unseen, unseen): separable, so the
    # slope is what the l2 term allows and the boundary sits midway: shift = -4 * slope. At the
    # validation rate 1/2 = the base rate, the shift needs no prior correction. B's logit is 0
    # on all four: no slope, shift logit(1/2) = 0. Each half (one sample of each class) fits
    # the same, and scaled gates get class 1 right: 100% against 50%, adopted.
    model = make_model()
    present = torch.tensor([BOTH] * 4)
    sel = select_on_validation(model, encoded(GATE_RAW, GATE_LOGITS), present, GATE_LABELS, top_ks=(), gate_mixes=())
    gates = sel.gate_scaling
    assert (gates.accuracy_as_trained, gates.accuracy_scaled, gates.adopted) == (50.0, 100.0, True)
    assert gates.slopes[0] > 2 and gates.shifts[0] == pytest.approx(-4 * gates.slopes[0], rel=1e-3)
    assert (gates.slopes[1], gates.shifts[1]) == (0.0, pytest.approx(0.0, abs=1e-6))
    assert (gates.seen_samples, gates.unseen_samples) == ([2, 2], [2, 2])
    assert sel.fusion_scores == [FusionScore("gate", None, "prior", 100.0)]  # judged with the scaled gates
    apply_selection(model, sel)
    assert torch.allclose(model.router.gates[0].weights, torch.tensor([0.0, 0.0, gates.shifts[0]]))


def test_gate_scaling_needs_both_kinds_of_samples_and_a_gain() -> None:
    # only class 0: A has no unseen samples, B no seen ones, so neither is fitted (1, 0), the
    # gates score as trained and the tie keeps them
    model = make_model()
    sel = select_on_validation(model, encoded(GATE_RAW[:2], GATE_LOGITS[:2]), torch.tensor([BOTH] * 2),
                               GATE_LABELS[:2], top_ks=(), gate_mixes=())
    assert (sel.gate_scaling.slopes, sel.gate_scaling.shifts) == ([1.0, 1.0], [0.0, 0.0])
    assert (sel.gate_scaling.unseen_samples[0], sel.gate_scaling.seen_samples[1]) == (0, 0)
    assert not sel.gate_scaling.adopted
    apply_selection(model, sel)
    assert torch.equal(model.router.gates[0].weights, torch.zeros(3))


def test_platt_scaling_moves_a_gate_to_its_base_rate_and_never_reverses_it() -> None:
    # A's logit +1 on four samples, 3 of class 0 (seen by A), and -1 on four, 1 of class 0:
    # sigmoid(a + b) = 3/4 and sigmoid(-a + b) = 1/4 give a = ln 3, b = 0; the l2 term 1e-3 a^2
    # takes 2e-3 ln 3 / (3/16) = 0.0117 off a (3/16 = sigma(1 - sigma) x^2 there). A's gate was fitted at base rate 0.2, the validation rate is 1/2:
    # shift = b - logit(1/2) + logit(0.2) = -ln 4. The same logits read backwards (3 of class 0
    # at -1) give a = -ln 3: the slope is kept at 0 and the shift is logit(1/2) - logit(1/2) +
    # logit(0.2) = -ln 4, the gate's base rate with no evidence.
    labels = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1])
    logits = [[1.0, 0.0]] * 4 + [[-1.0, 0.0]] * 4
    present = torch.tensor([[True, False]] * 8)  # one modality shown: no fusion to judge, nothing adopted
    raw = [[[0, 0, 0], [0, 0, 0]]] * 8
    gates = select_on_validation(make_model(base_rates=(0.2, 0.5)), encoded(raw, logits), present, labels).gate_scaling
    assert gates.slopes[0] == pytest.approx(math.log(3) - 2e-3 * math.log(3) / (3 / 16), abs=1e-3)
    assert gates.shifts[0] == pytest.approx(-math.log(4), abs=0.01)
    assert not gates.adopted and gates.accuracy_scaled is None
    backwards = [[-v, 0.0] for v, _ in logits]
    gates = select_on_validation(make_model(base_rates=(0.2, 0.5)), encoded(raw, backwards), present,
                                 labels).gate_scaling
    assert gates.slopes[0] == 0.0 and gates.shifts[0] == pytest.approx(-math.log(4), abs=1e-5)


def test_alternate_halves_split_every_class_in_turn() -> None:
    # class 1 at positions 0, 2, 3 -> first, second, first; class 0 at 1, 4 -> first, second
    assert alternate_halves(torch.tensor([1, 0, 1, 1, 0])).tolist() == [True, True, False, True, False]


def test_scaled_gates_change_only_the_gate_logits() -> None:
    enc = encoded(GATE_RAW, GATE_LOGITS)
    out = scaled_gates(enc, [2.0, 1.0], [-1.0, 0.5])
    assert out.gate_logit.tolist() == [[9.0, 9.0, 5.0, 5.0], [0.5] * 4] and out.raw is enc.raw


# Modality A alone (B absent). Sample 0, class 0 (A saw it): A = (3, 0, 0), gap best seen - best
# unseen = 3, right while predicted seen (margin < 3). Sample 1, class 1 (A did not see it):
# A = (2, 1, 0), gap 1, right once predicted unseen (margin >= 1). Margins 1 <= t < 3 get both right.
A_ALONE = [[[3, 0, 0], [0, 0, 0]], [[2, 1, 0], [0, 0, 0]]]
A_PRESENT = torch.tensor([[True, False], [True, False]])


def test_margin_moves_where_validation_data_says_it_is_better() -> None:
    # trained margin 0.5: seen 100, unseen 0 (mean 50); the curve's best is 2 (between the gaps):
    # 100 and 100. B shows no sample: its training margin stays.
    sel = select_on_validation(make_model((0.5, 0.7)), encoded(A_ALONE), A_PRESENT, torch.tensor([0, 1]))
    a, b = sel.margin_scores
    assert (a.trained, a.chosen, a.from_validation) == (0.5, 2.0, True)
    assert (a.seen_samples, a.unseen_samples, a.at_trained, a.at_chosen) == (1, 1, (100.0, 0.0), (100.0, 100.0))
    assert (b.chosen, b.from_validation, b.at_chosen) == (pytest.approx(0.7), False, None)
    assert sel.margins == [2.0, pytest.approx(0.7)]
    assert sel.multimodal_samples == 0 and sel.fusion == "gate"  # nothing to judge a fusion by
    model = make_model((0.5, 0.7))
    apply_selection(model, sel)
    # A alone on sample 1 now: (2 - 2, 1, 0): class 1, right
    assert model.fuse(encoded(A_ALONE), A_PRESENT).fused.argmax(-1).tolist() == [0, 1]


def test_margin_stays_on_a_tie_and_without_unseen_samples() -> None:
    # trained 1.5 already gets both right: a tie with the curve's 2, so 1.5 stays
    sel = select_on_validation(make_model((1.5, 0.0)), encoded(A_ALONE), A_PRESENT, torch.tensor([0, 1]))
    assert (sel.margin_scores[0].chosen, sel.margin_scores[0].from_validation) == (1.5, False)
    # only samples of A's seen class: nothing to trade off, the training margin stays
    sel = select_on_validation(make_model((0.5, 0.0)), encoded(A_ALONE[:1]), A_PRESENT[:1], torch.tensor([0]))
    assert (sel.margin_scores[0].chosen, sel.margin_scores[0].unseen_samples) == (0.5, 0)


def test_margin_respects_the_models_seen_accuracy_limit() -> None:
    # Two seen samples (gaps 3 and 0.5) and one unseen (gap 1): margin 2 gets the unseen one right
    # and loses the seen one of gap 0.5 (seen 100 -> 50, 50 points); with at most 3 points of seen
    # accuracy to give, the margins below 0.5 stay best (seen 100, unseen 0), and the trained 0.2
    # is one of them.
    raw = [*A_ALONE, [[2.0, 1.5, 0], [0, 0, 0]]]
    present = torch.tensor([[True, False]] * 3)
    sel = select_on_validation(make_model((0.2, 0.0)), encoded(raw), present, torch.tensor([0, 1, 0]))
    assert (sel.margin_scores[0].chosen, sel.margin_scores[0].from_validation) == (pytest.approx(0.2), False)
    unlimited = make_model((0.2, 0.0), calibration_max_seen_drop=None)
    sel = select_on_validation(unlimited, encoded(raw), present, torch.tensor([0, 1, 0]))
    # means: t < 0.5: (100 + 0)/2 = 50; 0.5 <= t < 1: (50 + 0)/2; 1 <= t < 3: (50 + 100)/2 = 75
    assert sel.margin_scores[0].chosen == 2.0


def test_a_model_without_its_learned_router_is_refused() -> None:
    model = create_model("CSCF", [2, 2], CLASS_EMB, SEEN).eval()
    with pytest.raises(ValueError, match="learned router"):
        select_on_validation(model, encoded(A_ALONE), A_PRESENT, torch.tensor([0, 1]))
