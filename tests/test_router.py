"""The learned router (issue 12): distances, the logistic gate, and the combination rule.

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from cscf_model import TrainData, create_model, model_from_checkpoint
import cscf_model.router as router_module
from cscf_model.router import (
    GateRouter,
    ModalityGate,
    class_holdouts,
    fit_gate,
    fit_logistic,
    fit_router,
    fit_router_with_logits,
    logit_features,
    class_balanced_bank,
    knn_mean_distance,
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


def test_cscf_with_gate_router_fuses_and_survives_a_checkpoint() -> None:
    train, seen, x = two_modality_setup()
    class_emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    model = create_model("CSCF", [3, 3], class_emb, seen, router="gate", fusion="gate").eval()
    both = torch.ones(len(x), 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="fitted router"):
        model([x, x], both)
    model.router = fit_router(train, seen, holdout=0.34, seed=0, repeats=1)
    out = model([x, x], both)
    # fusion "gate" with gate_mix "prior": mean of the modalities' logits + log P(pattern of c | x)
    post = model.router.posterior(model.router.gate_logits([x, x], out.logits, seen), both.T, seen)
    want = out.logits.mean(0) + post.clamp_min(1e-12).log()[:, seen_patterns(seen)[1]]
    assert torch.allclose(out.fused, want, atol=1e-5)
    # u is 1 - P(modality saw the class): each sample's u's sum to 1 with two disjoint sets
    assert torch.allclose(out.u.sum(0), torch.ones(len(x)))
    # encoded once (gate logits included), fused under another mask: the forward pass's result
    mixed = torch.stack([torch.arange(len(x)) % 3 != 1, torch.arange(len(x)) % 3 != 2], 1)
    for encoded in (model.encode([x, x]), model.encode_for_scoring([x, x])):
        assert torch.allclose(model.fuse(encoded, mixed).fused, model([x, x], mixed).fused, atol=1e-5)
    state = {"config": model.config.to_dict(), "input_dims": [3, 3], "model": model.state_dict()}
    again = model_from_checkpoint(state).eval()
    assert torch.equal(again([x, x], both).fused, out.fused)


def test_config_rejects_gate_fusion_without_gate_router() -> None:
    from cscf_model import load_config

    with pytest.raises(ValueError, match='need router="gate"'):
        load_config("B+O+D+C").replace(fusion="gate")
    assert load_config("B+O+D+C").replace(router="gate", fusion="gate", unimodal="gate").router == "gate"
