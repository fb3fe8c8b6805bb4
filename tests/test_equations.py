"""CSCF against the paper's equations (section 3), on cases small enough to work out by hand.

Expected values are written out in the tests or computed with plain math/numpy from the
paper's formula, never by calling the function under test a second time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cscf_model import CSCF, MapperConfig, ModelConfig, create_model
from cscf_model.cscf import (
    class_similarity,
    csmf_fuse,
    dmss_uncertainty,
    entropy,
    osrs_logits,
    pruned_similarity,
)
from cscf_model.metrics import acc_mix, accuracy, routing_accuracy, subsets

LOG2, LOG3 = math.log(2), math.log(3)


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def mask(*rows: str) -> torch.Tensor:
    """mask("10", "01") -> [[True, False], [False, True]]."""
    return torch.tensor([[c == "1" for c in row] for row in rows])


# ----------------------------------------------------------------------------- eq. 2


def test_osrs_logits_is_scaled_cosine() -> None:
    # cos([3,4], [1,0]) = 3/5, cos([3,4], [0,2]) = 4/5; times gamma^2 = 10.
    lo = osrs_logits(t([[3.0, 4.0]]), t([[1.0, 0.0], [0.0, 2.0]]), t(10.0))
    assert torch.allclose(lo, t([[6.0, 8.0]]))


def test_osrs_logits_ignore_the_norms_of_features_and_class_vectors() -> None:
    s_hat, c = t([[3.0, 4.0], [-1.0, 2.0]]), t([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    base = osrs_logits(s_hat, c, t(10.0))
    rescaled = osrs_logits(s_hat * t([[7.0], [0.01]]), c * t([[5.0], [0.3], [100.0]]), t(10.0))
    assert torch.allclose(base, rescaled)
    # row 2: cos([-1,2],[1,1]) = 1/sqrt(10)
    assert base[1, 2].item() == pytest.approx(10 / math.sqrt(10))


# ----------------------------------------------------------------------------- eqs. 3-7


def test_entropy_of_known_distributions() -> None:
    p = t([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    assert torch.allclose(entropy(p), t([LOG3, 0.0, 1.5 * LOG2]))
    assert entropy(torch.full((7,), 1 / 7, dtype=torch.float64)).item() == pytest.approx(math.log(7))


def _dmss(logits_a: list[list[float]], logits_b: list[list[float]], present: str = "11") -> torch.Tensor:
    """u for one sample: logits_* is the K modules' logits of one modality."""
    logits_k = t([logits_a, logits_b])[:, :, None, :]  # (M=2, K, B=1, N)
    return dmss_uncertainty(logits_k, mask(present).T)[:, 0]


def test_dmss_inconsistency_decides_against_the_more_confident_modality() -> None:
    # A: both modules uniform over 3 -> e^A = 0, H(p^A) = log 3.
    # B: modules uniform over 2 and over 3 -> e^B = (log3 - log2)/2 > 0, mean logits
    #    [0, 0, -25] -> H(p^B) = log 2.  Inc = [0, 1]; dif = [log3, log2] / (log3 + log2).
    u = _dmss([[0, 0, 0], [0, 0, 0]], [[0, 0, -50], [0, 0, 0]])
    dif_a = LOG3 / (LOG3 + LOG2)
    assert u.tolist() == pytest.approx([0 + dif_a, 1 + (1 - dif_a)], abs=1e-6)
    assert u.argmin().item() == 0  # entropy alone (dif) would have picked B


def test_dmss_k3_hand_case() -> None:
    # Eq. 4's 1/K (population std, not 1/(K-1)) scales every modality's e alike and cancels
    # in eq. 5's shares, so u cannot tell the two apart; the shares are what is checked.
    # A: H = [log3, log2, log2] -> e^A ∝ (log3 - log2); mean logits [0, 0, -33] -> H = log2.
    # B: H = [0, 0, log2]       -> e^B ∝ log2;          mean logits [33, 0, -17] -> H ≈ 0.
    # Inc^A = (log3-log2)/log3, Inc^B = log2/log3; dif = [1, 0].
    u = _dmss([[0, 0, 0], [0, 0, -50], [0, 0, -50]], [[50, 0, 0], [50, 0, 0], [0, 0, -50]])
    inc_a = (LOG3 - LOG2) / LOG3
    assert u.tolist() == pytest.approx([inc_a + 1, (1 - inc_a) + 0], abs=1e-6)


def test_dmss_equal_inc_shares_when_both_modalities_are_consistent() -> None:
    # e^A = e^B = 0 -> Inc = [1/2, 1/2]; H(p) = [log3, log2].
    u = _dmss([[0, 0, 0], [0, 0, 0]], [[0, 0, -50], [0, 0, -50]])
    dif_a = LOG3 / (LOG3 + LOG2)
    assert u.tolist() == pytest.approx([0.5 + dif_a, 0.5 + 1 - dif_a], abs=1e-6)


def test_dmss_absent_modality_is_infinite_and_the_present_one_takes_all_shares() -> None:
    # B's entropies are far from 0, so counting it would shrink A's shares below 1.
    u = _dmss([[0, 0, 0], [0, 0, -50]], [[0, 0, 0], [0, 0, -5]], present="10")
    assert u[1].item() == math.inf
    assert u[0].item() == pytest.approx(2.0)  # Inc^A = dif^A = 1


def _dmss_numpy(logits_k: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Eqs. 3-7 written out from the paper, over present modalities only."""
    def h(lo: np.ndarray) -> np.ndarray:
        p = np.exp(lo - lo.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return -(p * np.log(p)).sum(-1)

    h_k = h(logits_k)  # (M, K, B)
    e = np.sqrt(((h_k - h_k.mean(1, keepdims=True)) ** 2).sum(1) / h_k.shape[1])  # 1/K, eq. 4
    h_mean = h(logits_k.mean(1))  # eq. 6
    e, h_mean = e * present, h_mean * present
    u = e / e.sum(0) + h_mean / h_mean.sum(0)
    return np.where(present, u, np.inf)


def test_dmss_matches_a_numpy_transcription_of_the_paper() -> None:
    rng = np.random.default_rng(0)
    logits_k = rng.normal(size=(3, 4, 5, 6)) * 3  # three modalities: the code allows M > 2
    present = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=bool)
    u = dmss_uncertainty(torch.from_numpy(logits_k), torch.from_numpy(present)).numpy()
    assert np.allclose(u, _dmss_numpy(logits_k, present), atol=1e-6)
    # Inc and dif each sum to 1 over the present modalities, so u sums to 2.
    assert np.allclose(np.where(present, u, 0).sum(0), 2.0)


# ----------------------------------------------------------------------------- eq. 8


def test_class_similarity_is_the_cosine_matrix() -> None:
    r = 1 / math.sqrt(2)
    s = class_similarity(t([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]]))
    assert torch.allclose(s, t([[1, r, 0], [r, 1, -r], [0, -r, 1]]))


# ----------------------------------------------------------------------------- S^m (eq. 9)

SIM = t(
    [
        [1.0, 0.8, 0.3, -0.2],
        [0.8, 1.0, 0.5, 0.1],
        [0.3, 0.5, 1.0, 0.6],
        [-0.2, 0.1, 0.6, 1.0],
    ]
)
SEEN = mask("1011")[0]  # the modality saw classes 0, 2 and 3, not 1


def test_pruned_top1_keeps_the_nearest_seen_class() -> None:
    raw = pruned_similarity(SIM, SEEN, top_k=1, weights="similarity", normalize=False)
    # nearest seen class per row: 0 -> 0, 1 -> 0 (0.8, class 1 itself is unseen), 2 -> 2, 3 -> 3
    expected = t([[1, 0, 0, 0], [0.8, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert torch.allclose(raw, expected)
    normed = pruned_similarity(SIM, SEEN, top_k=1, weights="similarity", normalize=True)
    assert torch.allclose(normed, (expected > 0).double())


def test_pruned_top2_row_normalised() -> None:
    s = pruned_similarity(SIM, SEEN, top_k=2, weights="similarity", normalize=True)
    expected = t(
        [
            [1 / 1.3, 0, 0.3 / 1.3, 0],
            [0.8 / 1.3, 0, 0.5 / 1.3, 0],
            [0, 0, 1 / 1.6, 0.6 / 1.6],
            [0, 0, 0.6 / 1.6, 1 / 1.6],
        ]
    )
    assert torch.allclose(s, expected)
    assert torch.allclose(s.sum(1), torch.ones(4, dtype=torch.float64))
    assert (s[:, 1] == 0).all()  # never a column the modality did not see


def test_pruned_negative_similarities_clipped_only_when_normalised() -> None:
    # top_k=3 keeps all seen columns; row 0 then includes -0.2 for class 3.
    normed = pruned_similarity(SIM, SEEN, top_k=3, weights="similarity", normalize=True)
    assert torch.allclose(normed[0], t([1 / 1.3, 0, 0.3 / 1.3, 0]))
    assert torch.allclose(normed.sum(1), torch.ones(4, dtype=torch.float64))
    raw = pruned_similarity(SIM, SEEN, top_k=3, weights="similarity", normalize=False)
    assert torch.allclose(raw, SIM * SEEN[None, :].double())


def test_pruned_top_k_larger_than_seen_classes_is_capped() -> None:
    assert torch.equal(
        pruned_similarity(SIM, SEEN, top_k=10, weights="similarity", normalize=False),
        pruned_similarity(SIM, SEEN, top_k=3, weights="similarity", normalize=False),
    )


def test_pruned_uniform_weights() -> None:
    keep = t([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert torch.allclose(pruned_similarity(SIM, SEEN, 2, "uniform", normalize=False), keep)
    assert torch.allclose(pruned_similarity(SIM, SEEN, 2, "uniform", normalize=True), keep / 2)


# ----------------------------------------------------------------------------- eq. 9

# Two samples, M=2, N=3. Sample 0: A dominant (u^A < u^B); sample 1: B dominant.
LOGITS = t([[[1, 2, 3], [0, 3, 0]], [[4, 0, 2], [1, 1, 4]]])  # (M, B, N)
U = t([[0.5, 1.0], [1.0, 0.2]])
S_PRUNE = t(
    [
        [[1, 0, 0], [0, 0, 1], [0, 1, 0]],  # S^A, used when A is auxiliary (sample 1)
        [[0.5, 0.5, 0], [0, 1, 0], [0, 0.25, 0.75]],  # S^B, used when B is auxiliary (sample 0)
    ]
)
BOTH = torch.ones(2, 2, dtype=torch.bool)


def test_csmf_centred() -> None:
    fused, dom = csmf_fuse(LOGITS, U, BOTH, S_PRUNE, center=True, weight=1.0)
    # sample 0: lo^A + S^B (lo^B - 2)  = [1,2,3] + S^B [2,-2,0] = [1,2,3] + [0,-2,-0.5]
    # sample 1: lo^B + S^A (lo^A - 1)  = [1,1,4] + S^A [-1,2,-1] = [1,1,4] + [-1,-1,2]
    assert dom.tolist() == [0, 1]
    assert torch.allclose(fused, t([[1, 0, 2.5], [0, 0, 6]]))


def test_csmf_uncentred_and_lambda() -> None:
    fused, _ = csmf_fuse(LOGITS, U, BOTH, S_PRUNE, center=False, weight=1.0)
    # sample 0: [1,2,3] + S^B [4,0,2] = [1,2,3] + [2,0,1.5]
    assert torch.allclose(fused[0], t([3, 2, 4.5]))
    half, _ = csmf_fuse(LOGITS, U, BOTH, S_PRUNE, center=True, weight=0.5)
    assert torch.allclose(half, t([[1, 1, 2.75], [0.5, 0.5, 5]]))


def test_csmf_weight_zero_returns_the_dominant_logits() -> None:
    fused, _ = csmf_fuse(LOGITS, U, BOTH, S_PRUNE, center=False, weight=0.0)
    assert torch.equal(fused, t([[1, 2, 3], [1, 1, 4]]))


def test_csmf_unimodal_samples_keep_their_own_logits() -> None:
    present = mask("10", "01")  # (M, B): sample 0 only A, sample 1 only B
    u = torch.where(present, U, torch.full_like(U, math.inf))
    fused, dom = csmf_fuse(LOGITS, u, present, S_PRUNE, center=True, weight=1.0)
    assert dom.tolist() == [0, 1]
    assert torch.equal(fused, t([[1, 2, 3], [1, 1, 4]]))


def test_dmss_and_csmf_chain_picks_the_present_modality() -> None:
    # B's logits would be dominant (confident, consistent) but B is absent.
    logits_k = t([[[[0, 0, 0]], [[0, 0, -5]]], [[[50, 0, 0]], [[50, 0, 0]]]])  # (2, 2, 1, 3)
    present = mask("1", "0")  # (M, B)
    u = dmss_uncertainty(logits_k, present)
    fused, dom = csmf_fuse(logits_k.mean(1), u, present, S_PRUNE, center=True, weight=1.0)
    assert dom.tolist() == [0]
    assert torch.allclose(fused, t([[0, 0, -2.5]]))


# ----------------------------------------------------------------------------- eq. 10

N_CLASSES = 4
CLASS_EMB = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
SEEN_2 = mask("1100", "0011")
TWO_LINEAR = ModelConfig(mappers=(MapperConfig(kind="linear"), MapperConfig(kind="linear")))


def _tiny_model(**overrides: object) -> CSCF:
    """2 modalities (d=2 and d=3), K=2 linear mappers into d_s=2, weights set by hand."""
    torch.manual_seed(0)
    model = create_model(TWO_LINEAR, [2, 3], CLASS_EMB, SEEN_2, logit_scale=5.0, **overrides)
    with torch.no_grad():
        for m, mappers in enumerate(model.mappers):
            for k, lin in enumerate(mappers):
                lin.weight.copy_(torch.arange(lin.weight.numel()).reshape(lin.weight.shape) * 0.3 - k)
                lin.bias.copy_(torch.tensor([0.1 * m, -0.2 * k]))
    return model.eval()


def _ce(logits: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean cross-entropy, softmax restricted to `classes` when given."""
    if classes is not None:
        logits = np.where(classes[None, :], logits, -np.inf)
    z = logits.max(-1, keepdims=True)
    lse = (z + np.log(np.exp(logits - z).sum(-1, keepdims=True)))[:, 0]
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def _batch() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """One row of modality A, three of B (so a pooled mean would weight B 3:1)."""
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(4, 2, generator=g), torch.randn(4, 3, generator=g)]
    present = mask("10", "01", "01", "01")
    return feats, torch.tensor([1, 2, 3, 2]), present


def _expected_loss(lk: np.ndarray, y: np.ndarray, present: np.ndarray, seen=None) -> float:
    total = 0.0
    for m in range(lk.shape[0]):
        rows = present[:, m]
        classes = None if seen is None else seen[m]
        per_module = np.mean([_ce(lk[m, k][rows], y[rows], classes) for k in range(lk.shape[1])])
        total += per_module + _ce(lk[m][:, rows].mean(0), y[rows], classes)
    return total


def test_loss_is_eq10_averaged_per_modality_over_its_own_rows() -> None:
    model = _tiny_model()
    feats, y, present = _batch()
    out = model(feats, present)
    got = model.loss(out, y, present).item()
    lk = out.logits_k.detach().double().numpy()
    assert got == pytest.approx(_expected_loss(lk, y.numpy(), present.numpy()), rel=1e-5)


def test_loss_against_torch_cross_entropy_per_module() -> None:
    model = _tiny_model()
    feats, y, present = _batch()
    out = model(feats, present)
    expected = torch.zeros(())
    for m in range(2):
        rows = present[:, m]
        ces = [F.cross_entropy(out.logits_k[m, k][rows], y[rows]) for k in range(2)]
        expected = expected + sum(ces) / 2 + F.cross_entropy(out.logits_k[m][:, rows].mean(0), y[rows])
    assert torch.allclose(model.loss(out, y, present), expected)


def test_loss_seen_restricts_the_softmax_to_the_modalitys_seen_classes() -> None:
    model = _tiny_model(loss_classes="seen")
    feats, y, present = _batch()
    y = torch.tensor([1, 2, 3, 3])  # every label is seen by the modality that recorded it
    out = model(feats, present)
    lk = out.logits_k.detach().double().numpy()
    expected = _expected_loss(lk, y.numpy(), present.numpy(), seen=SEEN_2.numpy())
    assert model.loss(out, y, present).item() == pytest.approx(expected, rel=1e-5)
    all_classes = _expected_loss(lk, y.numpy(), present.numpy())
    assert expected < all_classes  # fewer competitors in the softmax


def test_model_fused_output_follows_eq9_with_its_pruned_matrix() -> None:
    model = _tiny_model(top_k=2, csmf_weight=0.7)
    feats, _, _ = _batch()
    with torch.no_grad():
        out = model(feats, torch.ones(4, 2, dtype=torch.bool))
    lo, u, s = out.logits.numpy(), out.u.numpy(), model.s_prune.numpy()
    for b in range(4):
        dom = int(np.argmin(u[:, b]))
        aux = 1 - dom
        centred = lo[aux, b] - lo[aux, b].mean()
        assert np.allclose(out.fused[b].numpy(), lo[dom, b] + 0.7 * s[aux] @ centred, atol=1e-5)
    assert out.dominant.tolist() == np.argmin(u, 0).tolist()


# ----------------------------------------------------------------------------- metrics

SEEN_BY = mask("10", "10", "01", "01", "10")  # which modality saw each sample's class
AVAILABLE = mask("11", "10", "11", "01", "01")


def test_subsets_pick_rows_and_presence() -> None:
    got = {s.name: s for s in subsets(SEEN_BY, AVAILABLE, ["a", "b"])}
    rows = {
        "a_s": [0, 1], "b_s": [2, 3], "a_u": [2], "b_u": [0, 4], "all": [0, 2], "all[a]": [0], "all[b]": [2],
        "given[a]": [1], "given[b]": [3, 4],
        "A_s": [0, 1], "B_s": [2, 3], "A_u": [2], "B_u": [0, 4],
        "A_s+B_u": [0], "A_u+B_s": [2], "A_all+B_all": [0, 2],
    }
    shown_mask = {"A": [True, False], "B": [False, True], "AB": [True, True]}
    shown = {
        "a_s": "A", "b_s": "B", "a_u": "A", "b_u": "B", "all": "AB", "all[a]": "AB", "all[b]": "AB",
        "given[a]": "A", "given[b]": "B",
        "A_s": "A", "B_s": "B", "A_u": "A", "B_u": "B",
        "A_s+B_u": "AB", "A_u+B_s": "AB", "A_all+B_all": "AB",
    }
    assert list(got) == list(rows)
    for name, expected in rows.items():
        assert got[name].rows.tolist() == expected, name
        assert got[name].present.tolist() == [shown_mask[shown[name]]] * len(expected), name


def test_three_modalities_with_overlapping_seen_sets() -> None:
    # classes seen by: sample 0 {a, b}, 1 {c}, 2 {} (no one), 3 {a, b}; samples 0-2 show all three
    seen_by = mask("110", "001", "000", "110")
    available = mask("111", "111", "111", "011")
    got = {s.name: s.rows.tolist() for s in subsets(seen_by, available, ["a", "b", "c"])}
    assert got["a_s"] == [0] and got["b_s"] == [0, 3] and got["c_s"] == [1]
    assert got["a_u"] == [1, 2] and got["b_u"] == [1, 2] and got["c_u"] == [0, 2, 3]
    assert got["all"] == [0, 1, 2]
    assert got["all[a+b]"] == [0] and got["all[c]"] == [1] and got["all[none]"] == [2]
    assert got["given[b+c]"] == [3]
    assert "A_s" not in got  # the paper's names only exist for two modalities
    scores = {"a_s": 90.0, "b_s": 80.0, "c_s": 70.0, "a_u": 10.0, "b_u": 20.0, "c_u": 30.0,
              "all": 1000.0, "all[a+b]": 60.0, "all[c]": 40.0, "all[none]": None, "given[b+c]": 1000.0}
    assert acc_mix(scores, ["a", "b", "c"]) == pytest.approx((90 + 80 + 70 + 10 + 20 + 30 + 60 + 40) / 8)


def test_two_overlapping_modalities_keep_the_paper_names_as_seen_by_one_only() -> None:
    seen_by = mask("11", "10", "01")  # class of sample 0 seen by both
    got = {s.name: s.rows.tolist() for s in subsets(seen_by, mask("11", "11", "11"), ["a", "b"])}
    assert got["A_s"] == [1] and got["B_s"] == [2] and got["A_u"] == [2] and got["B_u"] == [1]
    assert got["a_s"] == [0, 1] and got["all[a+b]"] == [0] and got["A_all+B_all"] == [0, 1, 2]


def test_acc_mix_is_the_mean_of_the_six_mix_subsets() -> None:
    scores = {"a_s": 90.0, "b_s": 80.0, "a_u": 10.0, "b_u": 20.0, "all[a]": 60.0, "all[b]": 40.0}
    assert acc_mix({**scores, "all": 1000.0, "A_s": 1000.0}, ["a", "b"]) == pytest.approx(50.0)


def test_accuracy_percent_none_when_empty_and_routing() -> None:
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(200 / 3)
    assert accuracy(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)) is None
    assert routing_accuracy(torch.tensor([0, 1, 1, 0]), mask("10", "01", "10", "10")) == 75.0
    # overlapping sets: either modality that saw the class is right; a class no one saw is not judged
    assert routing_accuracy(torch.tensor([0, 1, 1]), mask("11", "11", "00")) == 100.0
    empty = {s.name: s for s in subsets(mask("10", "10"), mask("10", "10"), ["a", "b"])}
    assert empty["B_s"].rows.numel() == 0 and empty["B_s"].present.shape == (0, 2)
