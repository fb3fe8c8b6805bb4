"""The learned router (issue 12): distances, the logistic gate, and the combination rule.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from cscf_model import TrainData, create_model, model_from_checkpoint
import cscf_model.router as router_module
from cscf_model.data import VARIANCE_FLOOR
from cscf_model.router import (
    GateRouter,
    ModalityGate,
    auc,
    class_holdouts,
    expert_product,
    fit_temperature,
    fit_gate,
    fit_logistic,
    fit_router,
    fit_router_with_logits,
    logit_features,
    out_of_fold_scaling,
    bank_knn_distance,
    class_balanced_bank,
    knn_mean_distance,
    local_density_ratio,
    mahalanobis_min,
    pattern_posterior,
    ceiling_probs,
    routed_probs,
    router_from_state,
    routing_correct,
    seen_patterns,
    shrunk_precision,
)

# Three modalities A, B, C over four classes with overlapping seen sets:
# class 0 seen by A only, class 1 by A and B, class 2 by C only, class 3 by nobody.
SEEN3 = torch.tensor([[True, True, False, False], [False, True, False, False], [False, False, True, False]])


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def posterior_by_pattern(post: torch.Tensor, seen: torch.Tensor) -> dict[tuple[bool, ...], float]:
    patterns, _ = seen_patterns(seen)
    return {tuple(p.tolist()): float(q) for p, q in zip(patterns, post)}


def test_seen_patterns_group_classes_by_who_saw_them() -> None:
    patterns, index = seen_patterns(SEEN3)
    assert [tuple(p.tolist()) for p in patterns[index]] == [
        (True, False, False), (True, True, False), (False, False, True), (False, False, False)]
    assert len(patterns) == 4


def test_posterior_three_modalities_overlapping_sets() -> None:
    # g = (0.8, 0.2, 0.5) at base rates pi = (0.5, 0.8, 0.5); every pattern has prior 1/4.
    # Likelihood ratios: A in 0.8/0.5 = 1.6, out 0.2/0.5 = 0.4; B in 0.2/0.8 = 0.25, out 0.8/0.2 = 4;
    # C in = out = 1. Pattern products: {A} 1.6*4 = 6.4, {A,B} 1.6*0.25 = 0.4, {C} 0.4*4 = 1.6,
    # {} 0.4*4 = 1.6; sum 10.
    g = torch.tensor([[logit(0.8)], [logit(0.2)], [0.0]])
    post = pattern_posterior(g, torch.ones(3, 1, dtype=torch.bool), SEEN3, torch.tensor([0.5, 0.8, 0.5]))
    got = posterior_by_pattern(post[0], SEEN3)
    want = {(True, False, False): 0.64, (True, True, False): 0.04, (False, False, True): 0.16,
            (False, False, False): 0.16}
    assert got == pytest.approx(want, abs=1e-6)


def test_posterior_ignores_absent_modalities_and_weights_evidence() -> None:
    # C absent: its confident gate must not count, so the result equals the one above.
    g = torch.tensor([[logit(0.8)], [logit(0.2)], [logit(0.99)]])
    present = torch.tensor([[True], [True], [False]])
    post = pattern_posterior(g, present, SEEN3, torch.tensor([0.5, 0.8, 0.5]))
    assert posterior_by_pattern(post[0], SEEN3)[(True, False, False)] == pytest.approx(0.64)
    # weight 0 on B: only A's ratios 1.6 / 0.4 remain: {A}, {A,B} 1.6 each, {C}, {} 0.4 each -> 0.4, 0.1
    post = pattern_posterior(g, present, SEEN3, torch.tensor([0.5, 0.8, 0.5]), torch.tensor([1.0, 0.0, 1.0]))
    got = posterior_by_pattern(post[0], SEEN3)
    assert got[(True, False, False)] == pytest.approx(0.4) and got[(False, False, True)] == pytest.approx(0.1)


def test_posterior_uses_class_share_as_prior() -> None:
    # Two modalities, A saw classes 0 and 1, B saw class 2: priors 2/3 and 1/3.
    # g_A = 0.75 at pi 0.5: ratios 1.5 / 0.5; g_B = 0.5 at pi 0.5: ratio 1 either way.
    # {A}: 2/3 * 1.5 = 1, {B}: 1/3 * 0.5 = 1/6 -> 6/7 and 1/7.
    seen = torch.tensor([[True, True, False], [False, False, True]])
    g = torch.tensor([[logit(0.75)], [0.0]])
    post = pattern_posterior(g, torch.ones(2, 1, dtype=torch.bool), seen, torch.tensor([0.5, 0.5]))
    got = posterior_by_pattern(post[0], seen)
    assert got[(True, False)] == pytest.approx(6 / 7) and got[(False, True)] == pytest.approx(1 / 7)


def test_routed_probs_three_modalities() -> None:
    # Six classes: {0, 4} seen by A only, {1, 5} by A and B, {2} by C only, {3} by nobody.
    seen = torch.tensor([[1, 1, 0, 0, 1, 1], [0, 1, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    logits = torch.tensor([
        [math.log(3), 0.0, 9.0, 0.0, 0.0, math.log(4)],  # A
        [9.0, math.log(2), 9.0, 0.0, 9.0, 0.0],  # B
        [100.0] * 6,  # C, absent: never read
    ])[:, None, :]
    present = torch.tensor([[True], [True], [False]])
    patterns, _ = seen_patterns(seen)
    q = {(False, False, False): 0.1, (False, False, True): 0.2, (True, False, False): 0.3, (True, True, False): 0.4}
    post = torch.tensor([[q[tuple(p.tolist())] for p in patterns]])
    # {A}: A alone speaks: softmax(log 3, 0) = 3/4, 1/4 on classes 0, 4.
    # {A,B}: mean of A and B: class 1 log(2)/2, class 5 log(4)/2 -> sqrt2 : 2.
    # {C} and {}: one class each, so all their mass goes to it (C absent: A and B speak).
    r = math.sqrt(2) / (math.sqrt(2) + 2)
    want = [0.3 * 0.75, 0.4 * r, 0.2, 0.1, 0.3 * 0.25, 0.4 * (1 - r)]
    assert routed_probs(logits, present, seen, post, hard=False)[0].tolist() == pytest.approx(want)
    # hard: everything on {A,B}
    assert routed_probs(logits, present, seen, post, hard=True)[0].tolist() == pytest.approx([0, r, 0, 0, 0, 1 - r])


def test_ceiling_and_routing_correct_read_the_true_pattern() -> None:
    # A saw classes 0, 1; B saw class 2. Sample 0 (class 1): only A speaks over {0, 1}:
    # softmax(0, log 3) = 1/4, 3/4. Sample 1 (class 2): B alone over {2}: 1.
    seen = torch.tensor([[True, True, False], [False, False, True]])
    logits = torch.tensor([[[0.0, math.log(3), 9.0], [0.0, 0.0, 0.0]], [[9.0, 9.0, 0.0], [9.0, 9.0, 1.0]]])
    present = torch.ones(2, 2, dtype=torch.bool)
    labels = torch.tensor([1, 2])
    p = ceiling_probs(logits, present, seen, labels)
    assert p.flatten().tolist() == pytest.approx([0.25, 0.75, 0.0, 0.0, 0.0, 1.0])
    patterns, _ = seen_patterns(seen)  # (False, True) = B's, (True, False) = A's
    posterior = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert routing_correct(posterior, seen, labels).tolist() == [True, True]
    assert routing_correct(posterior.flip(1), seen, labels).tolist() == [False, False]


def test_one_modality_is_cosmo_gate() -> None:
    # One modality present: p = g * softmax over its seen classes + (1-g) * softmax over the rest,
    # when the class shares equal the base rate (here 1/2 and 1/2).
    seen = torch.tensor([[True, True, False, False], [False, False, True, True]])
    logits = torch.tensor([[0.0, math.log(3), 0.0, 0.0], [5.0, 0.0, 0.0, 7.0]])[:, None, :]
    present = torch.tensor([[True], [False]])
    g = torch.tensor([[logit(0.7)], [logit(0.99)]])
    post = pattern_posterior(g, present, seen, torch.tensor([0.5, 0.5]))
    p = routed_probs(logits, present, seen, post, hard=False)[0]
    assert p.tolist() == pytest.approx([0.7 / 4, 0.7 * 3 / 4, 0.15, 0.15])


def test_mahalanobis_and_knn_distances() -> None:
    # P = diag(4, 1), x = (1, 1): to (0, 0) sqrt(4 + 1) = sqrt 5, to (1, 3) sqrt(0 + 4) = 2 -> 2
    means = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    d = mahalanobis_min(torch.tensor([[1.0, 1.0]]), means, torch.diag(torch.tensor([4.0, 1.0])))
    assert d.tolist() == pytest.approx([2.0])
    bank = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]])
    assert knn_mean_distance(torch.zeros(1, 2), bank, 2).tolist() == pytest.approx([1.5])  # (0 + 3) / 2
    assert knn_mean_distance(torch.zeros(1, 2), bank, 3).tolist() == pytest.approx([7 / 3])  # (0 + 3 + 4) / 3


def test_local_density_ratio_by_hand() -> None:
    # bank on a line: 0, 1 (a tight pair) and 10, 14 (a loose pair); k = 1.
    # own k-NN distances: 1, 1, 4, 4. x = 0.5: nearest 0 at 0.5, ratio 0.5 / 1;
    # x = 12: nearest 10 or 14 at 2, ratio 2 / 4; x = 5: nearest 1 at 4, ratio 4 / 1
    bank = torch.tensor([[0.0], [1.0], [10.0], [14.0]])
    kdist = bank_knn_distance(bank, 1)
    assert kdist.tolist() == pytest.approx([1.0, 1.0, 4.0, 4.0])
    x = torch.tensor([[0.5], [12.0], [5.0]])
    assert local_density_ratio(x, bank, kdist, 1).tolist() == pytest.approx([0.5, 0.5, 4.0])
    # k = 2: own distances (1 + 10) / 2, (1 + 9) / 2, (4 + 9) / 2, (4 + 13) / 2 = 5.5, 5, 6.5, 8.5;
    # x = 12: nearest 10 and 14 at 2 and 2, ratio 2 / ((6.5 + 8.5) / 2) = 4 / 15
    assert bank_knn_distance(bank, 2).tolist() == pytest.approx([5.5, 5.0, 6.5, 8.5])
    assert local_density_ratio(x[1:2], bank, bank_knn_distance(bank, 2), 2).tolist() == pytest.approx([4 / 15])
    assert bank_knn_distance(bank[:1], 5).tolist() == [1.0]  # one row: no neighbour, ratio = raw distance


def test_chunked_density_ratio_matches_the_whole() -> None:
    g = torch.Generator().manual_seed(4)
    x, bank = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    kdist = bank_knn_distance(bank, 3)
    assert torch.allclose(bank_knn_distance(bank, 3, chunk=7), kdist)
    assert torch.allclose(local_density_ratio(x, bank, kdist, 3, chunk=7), local_density_ratio(x, bank, kdist, 3))


def test_mahalanobis_expansion_and_chunked_knn_match_the_direct_forms() -> None:
    g = torch.Generator().manual_seed(3)
    x, means, bank = torch.randn(50, 16, generator=g) * 3 + 5, torch.randn(7, 16, generator=g) + 5, torch.randn(90, 16, generator=g)
    a = torch.randn(16, 16, generator=g)
    precision = a @ a.T / 16 + torch.eye(16)
    diff = x[:, None, :] - means[None, :, :]
    direct = torch.einsum("bcd,de,bce->bc", diff, precision, diff).min(1).values.sqrt()
    assert torch.allclose(mahalanobis_min(x, means, precision), direct, rtol=1e-4)
    whole = torch.cdist(x, bank).topk(5, dim=1, largest=False).values.mean(1)
    assert torch.allclose(knn_mean_distance(x, bank, 5, chunk=7), whole)


def test_class_balanced_bank_keeps_every_class_and_the_size() -> None:
    labels = torch.cat([torch.zeros(100), torch.ones(10), torch.full((40,), 2.0)]).long()
    z = torch.arange(len(labels), dtype=torch.float32)[:, None]
    every = torch.arange(len(labels))
    assert torch.equal(class_balanced_bank(z, labels, every, 200), z)  # under the cap: all rows
    bank = class_balanced_bank(z, labels, every, 24)
    kept = labels[bank[:, 0].long()]
    assert torch.bincount(kept).tolist() == [8, 8, 8]
    assert torch.equal(bank, class_balanced_bank(z, labels, every, 24))  # seeded
    some = torch.arange(0, len(labels), 2)  # only the rows asked for
    assert set(class_balanced_bank(z, labels, some, 24)[:, 0].long().tolist()) <= set(some.tolist())


def test_shrunk_precision_pools_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    # class 0: (0,0), (2,0) -> centred (-1,0), (1,0); class 1: (0,0), (0,4) -> (0,-2), (0,2).
    # S = diag(2, 8) / 3 (n - 1 = 3); tr(S)/d = 5/3; shrinkage 1/2: diag(7/6, 13/6) -> P = diag(6/7, 6/13)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    labels, means = torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = shrunk_precision(x, labels, means, torch.arange(4), 0.5)
    assert p.flatten().tolist() == pytest.approx([6 / 7, 0.0, 0.0, 6 / 13], abs=1e-6)
    # the same over rows of a bigger z, accumulated in chunks of one row
    bigger = torch.cat([torch.full((3, 2), 9.0), x])
    with_noise = torch.cat([torch.tensor([5, 5, 5]), labels])
    monkeypatch.setattr(router_module, "CHUNK", 1)
    again = shrunk_precision(bigger, with_noise, means, torch.arange(3, 7), 0.5)
    assert torch.allclose(again, p, atol=1e-6)


def test_fit_logistic() -> None:
    # no signal in z: the intercept is the log-odds of the labels, log(3/1)
    w = fit_logistic(torch.zeros(4, 1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert float(w[-1]) == pytest.approx(math.log(3), abs=1e-4)
    # separable, symmetric data: finite weights (the l2 term), positive slope, zero intercept
    w = fit_logistic(torch.tensor([[-2.0], [-1.0], [1.0], [2.0]]), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert 0 < float(w[0]) < 100 and float(w[-1]) == pytest.approx(0.0, abs=1e-4)


def noisy_fold(sign: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """200 gate features (n, 1) ~ N(sign * (2y - 1), 1.5^2): label y = 1 is read higher when sign > 0."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(200) % 2).float()
    return sign * (2 * y - 1)[:, None] + 1.5 * torch.randn(200, 1, generator=g), y


def test_out_of_fold_scaling_keeps_a_gate_that_carries_over() -> None:
    # identical folds: each fold's out-of-fold gate is the gate fitted on the same data, so
    # its logits are the fitted ones and Platt scaling leaves them: b = 0, and a = 1.016 (the
    # l2 term had shrunk the fitted slope a little), kept at 1
    fold = noisy_fold(1.0, 0)
    a, b = out_of_fold_scaling([fold, fold])
    assert a == 1.0 and b == pytest.approx(0.0, abs=0.01)


def test_out_of_fold_scaling_removes_evidence_that_does_not_carry_over() -> None:
    # the feature reads y = 1 high on two hold-outs and low on the third. Out of fold, the
    # third is scored by a gate fitted on the first two (wrong on all of it) and the first
    # two by gates whose folds cancel (slope near 0): Platt's slope is negative (-1.3), and
    # the gate keeps none of its evidence (a = 0) rather than being turned against its fit
    folds = [noisy_fold(1.0, 1), noisy_fold(1.0, 2), noisy_fold(-1.0, 3)]
    a, _ = out_of_fold_scaling(folds)
    assert a == 0.0
    assert out_of_fold_scaling([noisy_fold(1.0, 1)]) == (1.0, 0.0)  # one fold: nothing to score out of fold


def test_gate_fitted_on_several_holdouts_is_scaled_out_of_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = clusters(6, 20, 3, seed=5)
    seen = torch.ones(6, dtype=torch.bool)
    splits = class_holdouts(y, seen, 0.34, 0.2, 3, seed=0)
    monkeypatch.setattr(router_module, "out_of_fold_scaling", lambda folds: (1.0, 0.0))
    fitted = fit_gate(x, y, splits)
    monkeypatch.setattr(router_module, "out_of_fold_scaling", lambda folds: (0.5, -0.25))
    scaled = fit_gate(x, y, splits)
    assert torch.allclose(scaled(x, None, seen), 0.5 * fitted(x, None, seen) - 0.25, atol=1e-5)


def test_rescaling_a_router_scales_every_gates_logit() -> None:
    x, y = clusters(4, 20, 3, seed=6)
    seen = torch.ones(4, dtype=torch.bool)
    router = GateRouter([fit_gate(x, y, class_holdouts(y, seen, 0.5, 0.2, 2, seed=m)) for m in range(2)])
    before = [gate(x, None, seen) for gate in router.gates]
    router.rescale([0.5, 2.0], [-0.25, 1.0])
    after = [gate(x, None, seen) for gate in router.gates]
    assert torch.allclose(after[0], 0.5 * before[0] - 0.25, atol=1e-5)
    assert torch.allclose(after[1], 2.0 * before[1] + 1.0, atol=1e-5)
    assert torch.equal(router_from_state(router.state_dict(), "").gates[1].weights, router.gates[1].weights)


def clusters(n_classes: int, per_class: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_logit_features() -> None:
    # seen classes 0, 1: best seen logit 3 (class 1), best unseen 2.5 (class 3): gap 0.5
    f = logit_features(torch.tensor([[1.0, 3.0, -1.0, 2.5]]), torch.tensor([True, True, False, False]))
    assert f.tolist() == [[3.0, 0.5]]


def test_gate_separates_seen_from_unseen_classes() -> None:
    x, y = clusters(10, 20, 4, seed=0)
    seen_m = torch.arange(10) < 8
    splits = class_holdouts(y[y < 8], seen_m, holdout=0.25, val_share=0.2, repeats=2, seed=0)
    gate = fit_gate(x[y < 8], y[y < 8], splits)
    seen_logit, unseen_logit = gate(x[y < 8], None, seen_m), gate(x[y >= 8], None, seen_m)
    assert float(seen_logit.mean()) > 0 > float(unseen_logit.mean())
    assert 0 < float(gate.base_rate) < 1


def logit_only_signal(n_classes: int) -> tuple[TrainData, TrainData, torch.Tensor, torch.Tensor]:
    """One cluster (distances carry no signal); the logits are high on the sample's own
    group of classes: first half pseudo-seen, second half held out."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20 * n_classes, 3, generator=g)
    y = torch.arange(n_classes).repeat(20)
    pseudo = torch.arange(n_classes) < n_classes // 2
    logits = torch.where(pseudo[y][:, None] == pseudo[None, :], 2.0, 0.0)
    half = len(y) // 2
    return TrainData([x[:half]], [y[:half]]), TrainData([x[half:]], [y[half:]]), pseudo, logits[half:]


def test_gate_with_logit_features_reads_them() -> None:
    fit, val, pseudo, logits = logit_only_signal(8)  # 4 classes held out
    gate = fit_router_with_logits(fit, val, pseudo[None, :], [logits], holdout=0.25, seed=0).gates[0]
    assert gate.reads_logits
    out = gate(val.features[0], logits, pseudo)
    assert bool((out[pseudo[val.labels[0]]] > 0).all()) and bool((out[~pseudo[val.labels[0]]] < 0).all())
    with pytest.raises(ValueError, match="logit features"):
        gate(val.features[0], None, pseudo)


def test_gate_ignores_logits_fitted_on_too_few_held_out_classes() -> None:
    fit, val, pseudo, logits = logit_only_signal(4)  # 2 classes held out: below MIN_HELD_OUT_FOR_LOGITS
    gate = fit_router_with_logits(fit, val, pseudo[None, :], [logits], holdout=0.25, seed=0).gates[0]
    assert not gate.reads_logits


def constant_gate(g: float, base_rate: float, d: int) -> ModalityGate:
    """A gate whose logit is logit(g) whatever x: zero feature weights, bias logit(g)."""
    return ModalityGate(1, in_mean=torch.zeros(d), in_std=torch.ones(d), class_means=torch.zeros(1, d),
                        precision=torch.eye(d), bank=torch.zeros(1, d), feat_mean=torch.zeros(2),
                        feat_std=torch.ones(2), weights=torch.tensor([0.0, 0.0, logit(g)]),
                        base_rate=torch.tensor(base_rate))


def two_modality_setup() -> tuple[TrainData, torch.Tensor, torch.Tensor]:
    x, y = clusters(6, 10, 3, seed=1)
    seen = torch.stack([torch.arange(6) < 3, torch.arange(6) >= 3])
    return TrainData([x[y < 3], x[y >= 3]], [y[y < 3], y[y >= 3]]), seen, x


def test_router_rebuilds_from_state_dict() -> None:
    train, seen, x = two_modality_setup()
    router = fit_router(train, seen, holdout=0.34, seed=0, repeats=1)
    state = {f"router.{k}": v for k, v in router.state_dict().items()}
    again = router_from_state(state, "router.")
    logits = torch.zeros(2, len(x), 6)
    assert torch.equal(again.gate_logits([x, x], logits, seen), router.gate_logits([x, x], logits, seen))
    assert isinstance(again, GateRouter) and isinstance(again.gates[0], ModalityGate)


def test_gate_saved_before_the_density_ratio_reads_the_raw_knn_distance() -> None:
    # a state without bank_kdist (model folders written before it) loads, and its gate's
    # second feature is the raw k-NN distance it was fitted on
    train, seen, x = two_modality_setup()
    gate = fit_router(train, seen, holdout=0.34, seed=0, repeats=1).gates[0]
    state = {k: v for k, v in gate.state_dict().items() if k != "bank_kdist"}
    old = ModalityGate.from_state(state)
    assert old.bank_kdist is None and "bank_kdist" not in old.state_dict()
    z = (x - old.in_mean) / old.in_std
    raw = knn_mean_distance(z, old.bank, int(old.k)).clamp_min(1e-6).log()
    assert torch.allclose(old.features(x, None, seen[0])[:, 1] * old.feat_std[1] + old.feat_mean[1], raw, atol=1e-5)
    ratio = local_density_ratio(z, gate.bank, gate.bank_kdist, int(gate.k)).clamp_min(1e-6).log()
    second = gate.features(x, None, seen[0])[:, 1] * gate.feat_std[1] + gate.feat_mean[1]
    assert torch.allclose(second, ratio, atol=1e-5)


def router_state() -> dict[str, torch.Tensor]:
    train, seen, _ = two_modality_setup()
    router = fit_router(train, seen, holdout=0.34, seed=0, repeats=1)
    return {f"router.{k}": v.clone() for k, v in router.state_dict().items()}


@pytest.mark.parametrize("bad", [0.0, 1.0])
def test_router_state_with_base_rate_0_or_1_is_refused(bad: float) -> None:
    # log pi or log(1 - pi) would be infinite and the posterior NaN
    state = router_state()
    state["router.gates.1.base_rate"] = torch.tensor(bad)
    with pytest.raises(ValueError, match=r"^router state: router\.gates\.1\.base_rate must lie strictly between "
                       r"0 and 1, got [01]\.0$"):
        router_from_state(state, "router.")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("router.gates.0.precision", lambda v: v.fill_(math.nan), r"gates\.0\.precision has values that are not finite"),
    ("router.gates.0.in_std", torch.zeros_like, r"gates\.0\.in_std must be > 0"),
    ("router.gates.1.feat_std", lambda v: -v, r"gates\.1\.feat_std must be > 0"),
    ("router.gates.0.feat_mean", lambda v: torch.zeros(4), r"gates\.0\.feat_mean has shape \(4,\), expected \(2,\)"),
    ("router.gates.1.precision", lambda v: v[:2, :2], r"gates\.1\.precision has shape \(2, 2\), expected \(3, 3\)"),
    ("router.gates.0.bank", lambda v: v[:, :2], r"gates\.0\.bank has shape \(\d+, 2\), expected \(rows >= 1, 3\)"),
    ("router.gates.0.k", torch.zeros_like, r"gates\.0\.k must be >= 1"),
    ("router.gates.1.bank_kdist", lambda v: v[:-1], r"gates\.1\.bank_kdist has shape \(\d+,\), expected \(\d+,\)"),
    ("router.gates.0.bank_kdist", torch.zeros_like, r"gates\.0\.bank_kdist must be finite and > 0"),
    ("router.weight", lambda v: torch.ones(3), r"router\.weight has shape \(3,\), expected \(2,\)"),
    ("router.weight", lambda v: -v, r"router\.weight must be finite and >= 0"),
    ("router.temperature", torch.zeros_like, r"router\.temperature must be finite and > 0"),
    ("router.temperature", lambda v: torch.ones(1), r"router\.temperature has shape \(1,\), expected \(2,\)"),
    ("router.gates.1.weights", None, r"gates\.1\.weights is missing"),
])
def test_router_state_checks_every_field(key: str, value, message: str) -> None:
    state = router_state()
    if value is None:
        del state[key]
    else:
        state[key] = value(state[key])
    with pytest.raises(ValueError, match=message) as refused:
        router_from_state(state, "router.")
    assert "\n" not in str(refused.value)


def test_checkpoint_with_a_bad_router_state_is_refused_on_loading() -> None:
    _, seen, _ = two_modality_setup()
    class_emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    model = create_model("CSCF", [3, 3], class_emb, seen, router="gate", fusion="gate")
    state = {**model.state_dict(), **router_state()}
    state["router.gates.0.base_rate"] = torch.tensor(1.0)
    fresh = create_model("CSCF", [3, 3], class_emb, seen, router="gate", fusion="gate")
    with pytest.raises(ValueError, match=r"router\.gates\.0\.base_rate must lie strictly between 0 and 1"):
        fresh.load_state_dict(state)


@pytest.mark.parametrize("missing", ["pseudo-unseen", "pseudo-seen"])
def test_gate_fitted_with_one_kind_of_held_out_sample_gives_finite_outputs(missing: str) -> None:
    # 4 of 6 classes seen by the modality; the held-out samples are all of one kind
    x, y = clusters(4, 10, 3, seed=0)
    seen_m = torch.arange(6) < 4
    if missing == "pseudo-unseen":  # every held-out sample's class stays pseudo-seen: all labels 1
        pseudo, val = seen_m, torch.arange(len(y)) % 5 == 0
    else:  # only the held-out class's samples are held out: all labels 0
        pseudo, val = seen_m & (torch.arange(6) != 3), y == 3
    gate = fit_gate(x, y, [(val, pseudo, None)])
    # no evidence either way: g = 1/2 at pi = 1/2, likelihood ratio 1 whatever x
    assert float(gate.base_rate) == 0.5
    out = gate(x + 100.0, None, seen_m)
    assert torch.equal(out, torch.zeros(len(x)))
    # the posterior is then the prior: pattern {m} holds 4 of 6 classes, {} 2 of 6 -> 1/3, 2/3
    post = GateRouter([gate]).posterior(out[None, :], torch.ones(1, len(x), dtype=torch.bool), seen_m[None, :])
    assert torch.isfinite(post).all()
    assert torch.allclose(post, torch.tensor([[1 / 3, 2 / 3]]).expand(len(x), 2))


def test_a_dimension_constant_in_training_cannot_dominate_the_gate() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(20)
    x = (2 * torch.randn(10, 8, generator=g))[y] + torch.randn(len(y), 8, generator=g)  # overlapping clusters
    seen_m, train = torch.arange(10) < 8, y < 8
    splits = class_holdouts(y[train], seen_m, holdout=0.25, val_share=0.2, repeats=2, seed=0)
    constant = torch.cat([x, torch.full((len(x), 1), 3.0)], 1)  # a 9th dimension, 3.0 in every row
    without, with_constant = fit_gate(x[train], y[train], splits), fit_gate(constant[train], y[train], splits)
    # Scales, by hand: the 8 ordinary columns keep their sample standard deviations (the floor
    # does not bind); the constant one gets sqrt(VARIANCE_FLOOR * mean variance over the 9 columns).
    var = x[train].double().var(0)
    floor = math.sqrt(VARIANCE_FLOOR * float(var.sum()) / 9)
    assert torch.allclose(with_constant.in_std.double(), torch.cat([var.sqrt(), torch.tensor([floor])]), rtol=1e-5)
    assert torch.equal(with_constant.in_std[:-1], without.in_std)
    # A test value off the constant by a tenth of the floor (1e-3 of the typical spread here):
    # the gate stays within a logit of the gate fitted without that dimension (whose logits
    # range over -10..14). The absolute 1e-6 scale this floor replaced reads the same offset
    # as 2,000 standard deviations and moves the gate by about a hundred logits.
    off = constant.clone()
    off[:, -1] += 0.1 * floor
    reference = without(x, None, seen_m)
    assert float((with_constant(off, None, seen_m) - reference).abs().max()) < 1.0
    with_constant.in_std[-1] = 1e-6
    assert float((with_constant(off, None, seen_m) - reference).abs().max()) > 10


def brute_force_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    pos, neg = score[positive].tolist(), score[~positive].tolist()
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_computed_with_ties() -> None:
    # positives score 1, 2; negatives 2, 3, 1. Pairs: (1,2) 0, (1,3) 0, (1,1) 1/2, (2,2) 1/2,
    # (2,3) 0, (2,1) 1 -> 2/6. By ranks: sorted 1 1 2 2 3 have average ranks 1.5 1.5 3.5 3.5 5;
    # positives 1.5 + 3.5 = 5, U = 5 - 2*3/2 = 2, AUC = 2 / (2*3) = 1/3.
    score = torch.tensor([1.0, 2.0, 2.0, 3.0, 1.0])
    positive = torch.tensor([True, True, False, False, False])
    assert auc(score, positive) == pytest.approx(1 / 3, abs=1e-12)
    assert auc(score, ~positive) == pytest.approx(2 / 3, abs=1e-12)
    assert auc(torch.tensor([0.1, 0.35, 0.4, 0.8]), torch.tensor([False, False, True, True])) == 1.0
    assert auc(torch.zeros(4), torch.tensor([True, False, True, False])) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auc(score, torch.ones(5, dtype=torch.bool))


def test_auc_matches_the_pairwise_count_on_random_scores_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(2, 60, (1,), generator=g))
        levels = 3 if trial % 2 else 1000  # few distinct scores: many ties; many: few
        score = torch.randint(0, levels, (n,), generator=g).float() / 7
        positive = torch.rand(n, generator=g) < 0.4
        positive[0], positive[1] = True, False
        assert auc(score, positive) == pytest.approx(brute_force_auc(score, positive), abs=1e-12), trial


def test_cscf_with_gate_router_fuses_and_survives_a_checkpoint() -> None:
    train, seen, x = two_modality_setup()
    class_emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    model = create_model("CSCF", [3, 3], class_emb, seen, router="gate", fusion="gate", gate_mix="prior").eval()
    both = torch.ones(len(x), 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="fitted router"):
        model([x, x], both)
    # Gates that ignore x (zero weights): g_A = 0.8, g_B = 0.4, both at base rate 1/2, and the
    # patterns {A} (classes 0-2), {B} (3-5) have prior 1/2 each. Ratios: {A}: A in 0.8/0.5 = 1.6,
    # B out 0.6/0.5 = 1.2 -> 1.92; {B}: A out 0.2/0.5 = 0.4, B in 0.4/0.5 = 0.8 -> 0.32;
    # P({A} | x) = 1.92 / 2.24 = 6/7, P({B} | x) = 1/7 for every sample.
    model.router = GateRouter([constant_gate(0.8, 0.5, 3), constant_gate(0.4, 0.5, 3)])
    out = model([x, x], both)
    # fusion "gate" with gate_mix "prior": mean of the modalities' logits + log P(pattern of c | x)
    log_prior = torch.tensor([math.log(6 / 7)] * 3 + [math.log(1 / 7)] * 3)
    assert torch.allclose(out.fused, out.logits.mean(0) + log_prior, atol=1e-5)
    # u is 1 - P(modality saw the class): A 1/7, B 6/7
    assert torch.allclose(out.u, torch.tensor([[1 / 7], [6 / 7]]).expand(2, len(x)), atol=1e-6)
    model.router = fit_router(train, seen, holdout=0.34, seed=0, repeats=1)
    out = model([x, x], both)
    # each sample's u's sum to 1 with two disjoint seen sets
    assert torch.allclose(out.u.sum(0), torch.ones(len(x)))
    # encoded once (gate logits included), fused under another mask: the forward pass's result
    mixed = torch.stack([torch.arange(len(x)) % 3 != 1, torch.arange(len(x)) % 3 != 2], 1)
    for encoded in (model.encode([x, x]), model.encode_for_scoring([x, x])):
        assert torch.allclose(model.fuse(encoded, mixed).fused, model([x, x], mixed).fused, atol=1e-5)
    state = {"config": model.config.to_dict(), "input_dims": [3, 3], "model": model.state_dict()}
    again = model_from_checkpoint(state).eval()
    assert torch.equal(again([x, x], both).fused, out.fused)
    # a checkpoint written before the density ratio (no bank_kdist) loads, its gates on raw distances
    before = {**state, "model": {k: v for k, v in state["model"].items() if not k.endswith(".bank_kdist")}}
    assert len(before["model"]) == len(state["model"]) - 2
    assert all(gate.bank_kdist is None for gate in model_from_checkpoint(before).router.gates)


def test_config_rejects_gate_fusion_without_gate_router() -> None:
    from cscf_model import load_config

    with pytest.raises(ValueError, match='need router="gate"'):
        load_config("B+O+D+C").replace(fusion="gate")
    assert load_config("B+O+D+C").replace(router="gate", fusion="gate", unimodal="gate").router == "gate"


def test_expert_product_hand_computed() -> None:
    # Two modalities over three classes: A saw {0, 1}, B saw {1, 2}; one sample shows both.
    # Gates fitted at base rate 1/2 (logit 0) are moved to the share of classes each saw,
    # 2/3 (logit ln 2): A's gate logit 0 -> g_A = sigmoid(ln 2) = 2/3, B's -ln 2 -> g_B = 1/2.
    seen = torch.tensor([[True, True, False], [False, True, True]])
    logits = torch.tensor([[[2.0, 0.0, 5.0]], [[1.0, 3.0, 0.0]]])  # (M, B, N)
    gate_logit = torch.tensor([[0.0], [-math.log(2)]])
    half, ones, both = torch.full((2,), 0.5), torch.ones(2), torch.ones(2, 1, dtype=torch.bool)
    got = expert_product(logits, both, seen, gate_logit, half, ones, torch.tensor([False, False]), ones)
    ls = lambda a, b: a - math.log(math.exp(a) + math.exp(b))  # noqa: E731  log softmax of a over (a, b)
    # A: classes 0, 1 by g_A * softmax over {0, 1}; class 2 by (1 - g_A) spread over its one unseen class.
    # B: class 0 by (1 - g_B) over its one unseen class; classes 1, 2 by g_B * softmax over {1, 2}.
    a = [math.log(2 / 3) + ls(2, 0), math.log(2 / 3) + ls(0, 2), math.log(1 / 3)]
    b = [math.log(1 / 2), math.log(1 / 2) + ls(3, 0), math.log(1 / 2) + ls(0, 3)]
    assert torch.allclose(got[0], torch.tensor([a[c] + b[c] for c in range(3)]), atol=1e-5)
    # A aligned: its unseen class gets (1 - g_A) * softmax over {2} = 1/3 still (one class);
    # weights: w_A = 0 leaves B's distribution; temperature T_B = 2 halves B's logits.
    got = expert_product(logits, both, seen, gate_logit, half, torch.tensor([0.0, 1.0]), torch.tensor([True, False]),
                         torch.tensor([1.0, 2.0]))
    b2 = [math.log(1 / 2), math.log(1 / 2) + ls(1.5, 0), math.log(1 / 2) + ls(0, 1.5)]
    assert torch.allclose(got[0], torch.tensor(b2), atol=1e-5)
    # absent modality: A alone
    got = expert_product(logits, torch.tensor([[True], [False]]), seen, gate_logit, half, ones,
                         torch.tensor([False, False]), ones)
    assert torch.allclose(got[0], torch.tensor(a), atol=1e-5)


def test_expert_product_needs_both_modalities_to_name_a_class_both_saw() -> None:
    # A saw {0, 1}, B saw {1, 2}; both gates say "seen" (0.9 at base rate 1/2, 2/3 of the
    # classes each: moved to logit ln 9 - 0 + ln 2, g = 18/19). The posterior over patterns
    # would favour {A, B}, the pattern of class 1, whatever the classifiers say. In the product
    # class 1 gets g_A softmax_A(1) g_B softmax_B(1): when A names 0 and B names 2 (logit
    # gaps of 9 each) that is e^-18 below the classes each one names, so class 1 loses.
    seen = torch.tensor([[True, True, False], [False, True, True]])
    claim, half, ones = torch.full((2, 1), math.log(9.0)), torch.full((2,), 0.5), torch.ones(2)
    both, plain = torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    disagree = torch.tensor([[[9.0, 0.0, 0.0]], [[0.0, 0.0, 9.0]]])
    got = expert_product(disagree, both, seen, claim, half, ones, plain, ones)[0]
    g = 18 / 19
    assert float(got[0] - got[1]) == pytest.approx(math.log(1 - g) - math.log(g) + 18, abs=1e-3)
    assert int(got.argmax()) != 1
    agree = torch.tensor([[[0.0, 9.0, 0.0]], [[0.0, 9.0, 0.0]]])
    assert int(expert_product(agree, both, seen, claim, half, ones, plain, ones)[0].argmax()) == 1


def test_fit_temperature_hand_computed() -> None:
    # Logits (2, 0) on four samples, three of class 0, labels smoothed by 1 / (4 + 2) over the two
    # classes: targets (11/12, 1/12) for class 0, (1/12, 11/12) for class 1, on average 17/24 for
    # class 0. The log loss is least where softmax(2 / T)_0 = sigmoid(2 / T) = 17/24: T = 2 / ln(17/7).
    logits = torch.tensor([[2.0, 0.0, 7.0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    t = fit_temperature(logits, labels, torch.tensor([True, True, False]))  # class 2 left out
    assert t == pytest.approx(2 / math.log(17 / 7), rel=1e-4)


def test_fit_temperature_stays_finite_when_every_held_out_sample_is_right() -> None:
    # Two samples of class 0, both right: unsmoothed the loss falls as T -> 0. Smoothed by
    # 1/4: target 7/8 for class 0, sigmoid(2 / T) = 7/8, T = 2 / ln 7.
    t = fit_temperature(torch.tensor([[2.0, 0.0]] * 2), torch.tensor([0, 0]), torch.tensor([True, True]))
    assert t == pytest.approx(2 / math.log(7), rel=1e-4)


def test_router_saved_before_temperatures_loads_with_t_1() -> None:
    state = router_state()
    del state["router.temperature"]
    assert torch.equal(router_from_state(state, "router.").temperature, torch.ones(2))
