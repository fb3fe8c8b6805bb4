"""Each baseline's defining computation on a small hand-computed case, through the model
that `create_baseline` builds: a generic classifier under the same name fails these.

The cases fix a method's own parts (a head's bias, with its weights at zero) so that
their outputs are known numbers, then check what the method does with them. The last
tests run every method on three modalities with overlapping seen sets, and check
calibrated stacking's margin rule and the baseline stage's external class names.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cscf_model.baselines import BASELINES, CALIBRATABLE, ExternalSemantics, create_baseline, fit_margins
from cscf_model.baselines.dgz import LAMBDA_1, revised_cross_entropy
from cscf_model.baselines.dsecn import W_DSE, W_HTE, head_noun_taxonomy, ridge_readout
from cscf_model.baselines.lmvcat import ALPHA, BETA, D_MODEL as LMVCAT_D_MODEL, label_guided_loss
from cscf_model.baselines.uvat import ENSEMBLE, category_consistency
from cscf_model.baselines.zla import PRIOR_RATIO
from cscf_model import TrainConfig, TrainData
from cscf_model.calibration import pseudo_unseen_split
from test_baselines import one_thread  # noqa: F401  (autouse: one torch thread for tiny models)


def constant(layer: nn.Linear, bias: list[float]) -> None:
    """Make a linear layer output `bias` whatever its input."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(bias))


def inverse_softplus(e: float) -> float:
    return math.log(math.expm1(e))


def two_modalities(n_classes: int = 2, dims: tuple[int, ...] = (3, 3), d_s: int = 4):
    g = torch.Generator().manual_seed(0)
    seen = torch.zeros(len(dims), n_classes, dtype=torch.bool)
    for c in range(n_classes):
        seen[c % len(dims), c] = True
    return list(dims), torch.randn(n_classes, d_s, generator=g), seen


def test_tmc_combines_views_by_dempster_shafer_and_trains_the_evidential_loss() -> None:
    dims, emb, seen = two_modalities()
    model = create_baseline("TMC", dims, emb, seen)
    # Evidence e1 = (3, 1), e2 = (1, 1): alpha1 = (4, 2), alpha2 = (2, 2), K = 2.
    constant(model.evidence[0][-1], [inverse_softplus(3.0), inverse_softplus(1.0)])
    constant(model.evidence[1][-1], [inverse_softplus(1.0), inverse_softplus(1.0)])
    # b1 = (1/2, 1/6), u1 = 1/3; b2 = (1/4, 1/4), u2 = 1/2; conflict C = 1/2*1/4 + 1/6*1/4 = 1/6.
    # b = (b1 b2 + b1 u2 + b2 u1) / (1 - C) = (0.55, 0.25), u = u1 u2 / (1 - C) = 0.2,
    # alpha = b K / u + 1 = (6.5, 3.5), expected probability alpha / S = (0.65, 0.35).
    x = [torch.randn(1, 3), torch.randn(1, 3)]
    both = model.predict(x, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(both.scores, torch.tensor([[0.65, 0.35]]), atol=1e-5)
    assert both.dominant.tolist() == [0]  # u1 = 1/3 < u2 = 1/2
    # A view alone passes through: alpha1 / S1 = (4/6, 2/6).
    alone = model.predict(x, torch.tensor([[True, False]]))
    assert torch.allclose(alone.scores, torch.tensor([[4 / 6, 2 / 6]]), atol=1e-5)
    # Loss at epoch 0 (KL annealed out): sum of E[CE] = digamma(S) - digamma(alpha_y) over the
    # combination and each view, for label 0: combined (10, 6.5), view 1 (6, 4), view 2 (4, 2).
    dg = lambda v: float(torch.digamma(torch.tensor(v)))  # noqa: E731
    expected = (dg(10.0) - dg(6.5)) + (1 / 4 + 1 / 5) + (1 / 2 + 1 / 3)
    loss = model.loss(model.inputs(x, torch.ones(1, 2, dtype=torch.bool)), torch.tensor([0]),
                      torch.ones(1, 2, dtype=torch.bool), epoch=0)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # View 1 alone, KL fully annealed in: the combination equals view 1 (the absent view is vacuous),
    # and each pays E[CE] + KL(Dir(1, 2) || Dir(1, 1)) = 1/4 + 1/5 + ln 2 - 1/2.
    one_view = model.loss(model.inputs(x, torch.tensor([[True, False]])), torch.tensor([0]),
                          torch.tensor([[True, False]]), epoch=10_000)
    assert one_view.item() == pytest.approx(2 * (1 / 4 + 1 / 5 + math.log(2) - 1 / 2), abs=1e-5)


def test_zla_adds_its_prior_in_training_and_drops_it_at_test() -> None:
    dims, emb, seen = two_modalities(n_classes=4)  # modality 0 saw classes 0 and 2
    model = create_baseline("ZLA", dims, emb, seen)
    labels = [torch.tensor([0, 0, 0, 2]), torch.tensor([1, 3])]
    model.prepare(TrainData([torch.randn(4, 3), torch.randn(2, 3)], labels))
    r = PRIOR_RATIO
    # p(y): 3/4 and 1/4 within the seen classes, 1/2 within the unseen; p0(seen) = r / (1 + r).
    expected = torch.tensor([math.log(0.75 * r / (1 + r)), math.log(0.5 / (1 + r)),
                             math.log(0.25 * r / (1 + r)), math.log(0.5 / (1 + r))])
    assert torch.allclose(model.models[0].log_prior, expected, atol=1e-6)
    x = torch.randn(5, 3)
    out = model.predict([x, torch.zeros(5, 3)], torch.tensor([[True, False]] * 5))
    assert torch.allclose(out.scores, model.models[0].logits(model.standardise(0, x)).log_softmax(-1), atol=1e-6)


def test_dgz_revised_cross_entropy_and_its_two_generation_levels() -> None:
    logits = torch.tensor([[2.0, 1.0, 3.0, 0.0], [0.0, 1.0, 2.0, 0.5]])
    seen = torch.tensor([True, True, False, False])
    # Row 0 (seen class 0): unseen classes leave the denominator except the top one (class 2,
    # weight lambda_1). Row 1 (unseen class 3): the plain softmax.
    row0 = math.log(math.exp(2) + math.exp(1) + LAMBDA_1 * math.exp(3)) - 2
    row1 = math.log(1 + math.exp(1) + math.exp(2) + math.exp(0.5)) - 0.5
    got = revised_cross_entropy(logits, torch.tensor([0, 3]), seen, LAMBDA_1)
    assert float(got) == pytest.approx((row0 + row1) / 2, abs=1e-5)

    dims, emb, seen2 = two_modalities(n_classes=2)
    dgz = create_baseline("DGZ", dims, emb, seen2).models[0]
    constant(dgz.prototype[-1], [1.0, 2.0, 3.0])  # class level: where the class lies
    constant(dgz.variation.decoder[-1], [0.5, -0.5, 0.0])  # instance level: spread around it
    assert torch.allclose(dgz.generate(torch.tensor([1, 1])), torch.tensor([[1.5, 1.5, 3.0]] * 2))
    constant(dgz.variation.decoder[-1], [0.0, 0.0, 0.0])
    assert torch.allclose(dgz.generate(torch.tensor([0])), torch.tensor([[1.0, 2.0, 3.0]]))


def test_dsecn_enrichment_loss_reads_external_names_through_the_frozen_head() -> None:
    assert head_noun_taxonomy(["great white shark", "tiger shark", "goldfish"]) == (["shark", "shark"], [0, 1])
    # The frozen readout: ridge regression, here (X^T X + 1 * 2 I)^{-1} X^T S with X = S = I_2 -> I / 3.
    assert torch.allclose(ridge_readout(torch.eye(2), torch.eye(2), 1.0), torch.eye(2) / 3)
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    names = torch.stack([e1, (e1 + e2) / math.sqrt(2)])
    external = ExternalSemantics(names, e2[None], torch.tensor([0]))
    model = create_baseline("DSECN", [2, 2], torch.stack([e1, e2]), torch.eye(2, dtype=torch.bool), external)
    dsecn = model.models[0]
    dsecn.s2v = nn.Identity()  # S2V(s) = s and the readout = I: the head sees the semantics themselves
    dsecn.readout.copy_(torch.eye(2))
    # DSE: name j must be read as j. cos(e1, n2) = 1/sqrt 2, so each row is log(1 + exp(-25 (1 - 1/sqrt 2))).
    dse = math.log1p(math.exp(-25 * (1 - 1 / math.sqrt(2))))
    # HTE: hypernym e2 must be read as hyponym 0: logits 25 (0, 1/sqrt 2).
    hte = math.log1p(math.exp(25 / math.sqrt(2)))
    assert dsecn.enrichment_loss().item() == pytest.approx(W_DSE * dse + W_HTE * hte, rel=1e-5)
    # Training loss = CE over the modality's seen classes (class 0 only: 0) + enrichment.
    assert dsecn.loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(
        W_DSE * dse + W_HTE * hte, rel=1e-5)


def test_mmdynamics_scales_each_modality_by_its_tcp_confidence_head() -> None:
    dims, emb, seen = two_modalities(n_classes=4)
    model = create_baseline("Mmdynamics", dims, emb, seen).train()
    for m in range(2):
        constant(model.gate[m], [0.0] * 3)  # g = 1/2
        constant(model.classifier[m], [0.0] * 4)  # uniform: TCP = 1/4
    constant(model.fused, [0.0] * 4)
    constant(model.confidence[0], [0.9])
    constant(model.confidence[1], [0.2])
    x = [torch.randn(1, 3), torch.randn(1, 3)]
    present = torch.tensor([[True, False]])
    # CE(fused) + [mean gate + (confidence - TCP)^2 + CE(modality)] for the present modality.
    expected = math.log(4) + 0.5 + (0.9 - 0.25) ** 2 + math.log(4)
    assert model.loss(model.inputs(x, present), torch.tensor([0]), present, 0).item() == pytest.approx(expected, abs=1e-5)
    # The fused classifier reads hidden * confidence: a confidence of 0 silences a modality.
    model.eval()
    nn.init.normal_(model.fused.weight)
    constant(model.confidence[0], [0.0])
    both = torch.ones(2, 2, dtype=torch.bool)
    a = model.predict([torch.randn(2, 3), x[1].expand(2, 3)], both)
    b = model.predict([torch.randn(2, 3), x[1].expand(2, 3)], both)
    assert torch.allclose(a.scores, b.scores) and (a.dominant == 1).all()  # 0.2 > 0


def test_lmvcat_label_guided_loss() -> None:
    tokens = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[-1.0, 0.0]]])  # (B=3, V=1, D=2)
    labels = torch.tensor([0, 0, 1])
    # Pairs (ordered, off-diagonal): (1,2) same label, sim 1/2 -> ln 2 twice; (1,3) different,
    # sim 0 -> -ln(1 - 1e-5) ~ 0 twice (clamped); (2,3) different, sim 1/2 -> ln 2 twice.
    expected = 0.5 * (4 * math.log(2) - 2 * math.log(1 - 1e-5)) / 6
    assert float(label_guided_loss(tokens, labels, torch.ones(3, 1, dtype=torch.bool))) == pytest.approx(expected, rel=1e-4)


def test_lmvcat_loss_on_hand_made_view_tokens() -> None:
    """LMVCAT's whole loss, CE(sample token) + ALPHA * label guidance + BETA * CE(class
    tokens), on view tokens and heads fixed by hand, against the value computed by hand."""
    d = LMVCAT_D_MODEL
    model = create_baseline("LMVCAT", [d, d], torch.randn(2, 4), torch.eye(2, dtype=torch.bool))
    model.embed = nn.ModuleList([nn.Identity(), nn.Identity()])  # a view's token is its input ...
    with torch.no_grad():
        for layer in model.view_transformer.layers:  # ... through identity layers (residual branches 0)
            for linear in (layer.self_attn.out_proj, layer.linear2):
                linear.weight.zero_()
                linear.bias.zero_()
        # ... and the final LayerNorm, which leaves a zero-mean, unit-variance vector as it is
        # (up to 1 / sqrt(1 + eps)); u, w and -u are such vectors, u . w = 0.
        u = torch.tensor([1.0, -1.0]).repeat_interleave(d // 2)
        w = torch.tensor([1.0, -1.0]).repeat(d // 2)
        model.head.weight.copy_(torch.stack([u, w]) / d)  # sample-token logits (t.u / d, t.w / d)
        model.head.bias.zero_()
        model.class_w.zero_()  # class-token logits = class_b whatever the tokens
        model.class_b.copy_(torch.tensor([0.0, 2.0]))
    # Samples 0-2 show view 0 only (tokens u, w, -u), samples 3-4 view 1 only (u, w).
    zero = torch.zeros(d)
    feats = [torch.stack([u, w, -u, zero, zero]), torch.stack([zero, zero, zero, u, w])]
    present = torch.tensor([[True, False]] * 3 + [[False, True]] * 2)
    labels = torch.tensor([0, 0, 1, 1, 0])
    ln = math.log
    # Sample-token CE: the fused token is the present view's; logits (1, 0), (0, 1), (-1, 0),
    # (1, 0), (0, 1) for labels 0, 0, 1, 1, 0.
    ce_sample = (ln(1 + math.exp(-1)) + ln(1 + math.e) + ln(1 + math.exp(-1)) + ln(1 + math.e) + ln(1 + math.e)) / 5
    # Class-token CE: logits (0, 2) for every sample; three of label 0, two of label 1.
    ce_class = (3 * ln(1 + math.exp(2)) + 2 * ln(1 + math.exp(-2))) / 5
    # Label guidance, per view, over ordered pairs: view 0 as in the test above (same label,
    # sim 1/2: ln 2; different labels, sim 0 clamped to 1e-5: -ln(1 - 1e-5); different, sim
    # 1/2: ln 2); view 1: different labels, sim 1/2: ln 2. Half the mean over the two views.
    view0 = (4 * ln(2) - 2 * ln(1 - 1e-5)) / 6
    guidance = 0.5 * (view0 + ln(2)) / 2
    expected = ce_sample + ALPHA * guidance + BETA * ce_class
    assert model.loss(feats, labels, present, 0).item() == pytest.approx(expected, rel=1e-4)


def test_uvat_late_fusion_by_ensemble_uncertainty() -> None:
    dims, emb, seen = two_modalities(n_classes=2)
    model = create_baseline("UVaT", dims, emb, seen)
    constant(model.heads[0][-1], [2.0, 0.0] * ENSEMBLE)  # every member of view 0 says (2, 0)
    constant(model.heads[1][-1], [0.0, 1.0] * ENSEMBLE)  # every member of view 1 says (0, 1)

    def u(p: float) -> float:  # normalised entropy of (p, 1 - p)
        return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)

    u0, u1 = u(1 / (1 + math.exp(-2))), u(1 / (1 + math.exp(1)))
    w0 = (1 - u0) / ((1 - u0) + (1 - u1))
    fused = torch.tensor([2 * w0, 1 - w0])
    x = [torch.randn(1, 3), torch.randn(1, 3)]
    out = model.predict(x, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(out.scores, fused.softmax(-1)[None], atol=1e-5)
    assert out.dominant.tolist() == [0]
    # Members that disagree make a view uncertain: view 1's members (2, 0), (0, 2), (0, 0) -> u = 1, weight 0.
    constant(model.heads[1][-1], [2.0, 0.0, 0.0, 2.0, 0.0, 0.0])
    out = model.predict(x, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(out.scores, torch.tensor([[2.0, 0.0]]).softmax(-1), atol=1e-4)
    # Category consistency: rows of class 0 predict (.8, .2) and (.4, .6), their mean is (.6, .4).
    log_p = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]]).log()
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    expected = (kl((0.6, 0.4), (0.8, 0.2)) + kl((0.6, 0.4), (0.4, 0.6))) / 3
    assert float(category_consistency(log_p, torch.tensor([0, 0, 1]))) == pytest.approx(expected, rel=1e-5)


def test_calibrated_stacking_subtracts_margins_on_single_modality_rows_only() -> None:
    dims, emb, seen = two_modalities(n_classes=4)
    model = create_baseline("ZLA", dims, emb, seen)
    x = [torch.randn(6, 3), torch.randn(6, 3)]
    present = torch.tensor([[True, False]] * 3 + [[True, True]] * 3)
    before = model.predict(x, present)
    model.margin.copy_(torch.tensor([100.0, 0.0]))
    after = model.predict(x, present)
    raw = model.models[0].logits(model.standardise(0, x[0][:3]))
    assert torch.allclose(after.scores[:3], (raw - 100.0 * seen[0]).log_softmax(-1), atol=1e-5)
    assert not seen[0][after.scores[:3].argmax(1)].any()  # modality 0 alone now predicts its unseen classes
    assert torch.equal(after.scores[3:], before.scores[3:])  # several modalities: the selection decides


# ----------------------------------------------------------------------------- M modalities


DIMS3, N3, DS3 = (6, 5, 4), 6, 8


@pytest.fixture(scope="module")
def three_modalities() -> tuple[torch.Tensor, torch.Tensor, TrainData, ExternalSemantics]:
    """Three modalities, overlapping seen sets (class 2 seen by all, class 5 by none)."""
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(N3, DS3, generator=g)
    seen = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    feats, labels = [], []
    for m, d in enumerate(DIMS3):
        y = seen[m].nonzero().squeeze(1).repeat_interleave(8)
        feats.append(emb[y] @ torch.randn(DS3, d, generator=g) + 0.3 * torch.randn(len(y), d, generator=g))
        labels.append(y)
    external = ExternalSemantics(torch.randn(12, DS3, generator=g), torch.randn(4, DS3, generator=g), torch.arange(4))
    return emb, seen, TrainData(feats, labels), external


@pytest.mark.parametrize("name", BASELINES)
def test_trains_and_predicts_on_three_modalities_with_overlapping_seen_sets(name: str, three_modalities) -> None:
    emb, seen, data, external = three_modalities
    model = create_baseline(name, list(DIMS3), emb, seen, external)
    losses = model.fit(data, TrainConfig(epochs=2, batch_size=16, seed=0, device="cpu"))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    present = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]] * 2, dtype=torch.bool)
    feats = [torch.randn(len(present), d) for d in DIMS3]
    out = model.predict(feats, present)
    assert out.scores.shape == (len(present), N3) and torch.isfinite(out.scores).all()
    assert present[torch.arange(len(present)), out.dominant].all()  # the deciding modality is a present one
    for m in range(3):
        feats[m][~present[:, m]] = 1e3  # what sits in an absent modality is ignored
    assert torch.allclose(model.predict(feats, present).scores, out.scores, atol=1e-5)


def _mean_accuracy(logits: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor, margin: float) -> float | None:
    """Mean of seen- and unseen-class accuracy (percent) of argmax(logits - margin on the
    seen classes): calibrated stacking written out, one margin at a time. None when the
    samples are all of seen or all of unseen classes (nothing to weigh)."""
    right = ((logits - margin * seen.float()).argmax(1) == labels).double()
    own = seen[labels]
    if own.all() or not own.any():
        return None
    return 50.0 * (float(right[own].mean()) + float(right[~own].mean()))


@pytest.mark.parametrize("name", CALIBRATABLE)
def test_margins_are_chosen_on_training_data_for_every_modality(name: str, three_modalities) -> None:
    """fit_margins trains one copy of the method without a held-out share of each modality's
    seen classes, and gives each modality the margin that is best on held-out training
    samples by the mean of seen- and unseen-class accuracy (the closest to 0 among equals).
    Checked by a brute-force sweep: every margin between two points where a prediction
    changes, each scored by plain argmax."""
    emb, seen, data, external = three_modalities
    cfg = TrainConfig(epochs=2, batch_size=16, seed=0, device="cpu")
    copies: list[tuple[torch.Tensor, nn.Module, list[TrainData]]] = []

    def make(pseudo_seen: torch.Tensor):
        model = create_baseline(name, list(DIMS3), emb, pseudo_seen, external)
        fitted: list[TrainData] = []
        real_fit = model.fit
        model.fit = lambda d, c: (fitted.append(d), real_fit(d, c))[1]  # type: ignore[method-assign]
        copies.append((pseudo_seen, model, fitted))
        return model

    margins = fit_margins(make, data, seen, cfg, 0.34, "mean", None, torch.zeros(3, dtype=torch.bool))
    (pseudo_seen, model, fitted), = copies  # one copy, trained once
    fit, val = fitted[0], pseudo_unseen_split(data, seen, 0.34, 0.2, cfg.seed)[2]
    assert len(margins) == 3 and margins[0] != 0 and margins[1] != 0
    with torch.no_grad():
        for m, margin in enumerate(margins):
            held_out = seen[m] & ~pseudo_seen[m]
            assert held_out.any() and not (pseudo_seen[m] & ~seen[m]).any()
            assert not held_out[fit.labels[m]].any() and held_out[val.labels[m]].any()
            assert len(fit.labels[m]) + len(val.labels[m]) == len(data.labels[m])  # training data only
            logits = model.modality_logits(m, model.standardise(m, val.features[m]))
            best_seen = logits.masked_fill(~pseudo_seen[m], -math.inf).amax(1)
            best_unseen = logits.masked_fill(pseudo_seen[m], -math.inf).amax(1)
            gaps = sorted(set((best_seen - best_unseen).tolist()))
            candidates = [gaps[0] - 1, gaps[-1] + 1, 0.0] + [(a + b) / 2 for a, b in zip(gaps, gaps[1:])]
            scores = {t: _mean_accuracy(logits, val.labels[m], pseudo_seen[m], t) for t in candidates}
            if None in scores.values():  # here modality 2: its held-out samples are all pseudo-unseen
                assert margin == 0, m  # no evidence: no calibration
                continue
            best = max(scores.values())
            assert _mean_accuracy(logits, val.labels[m], pseudo_seen[m], margin) == pytest.approx(best), m
            assert min(abs(t) for t, score in scores.items() if score >= best - 1e-6) == pytest.approx(abs(margin)), m


def test_fusion_methods_have_no_margin_to_fit(three_modalities) -> None:
    emb, seen, data, _ = three_modalities
    with pytest.raises(ValueError, match="TMC has no per-modality class scores"):
        fit_margins(lambda s: create_baseline("TMC", list(DIMS3), emb, s), data, seen,
                    TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu"), 0.34, "mean", None,
                    torch.zeros(3, dtype=torch.bool))


# ----------------------------------------------------------------------------- DSECN's external names


def test_external_names_are_pinned_and_embedded_once_per_encoder(tmp_path, monkeypatch) -> None:
    from tasks.evaluation import baselines

    names = baselines.read_external_names()
    assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
    edited = tmp_path / "names.txt"
    edited.write_text("tench\n")
    with pytest.raises(ValueError, match="names.txt: content differs from the pinned list"):
        baselines.read_external_names(edited)
    few = ["great white shark", "tiger shark", "goldfish"]
    ext = baselines.external_semantics(tmp_path, "minilm", few)
    assert ext.names.shape == (3, 384) and ext.hyper_target.tolist() == [0, 1]
    assert torch.equal(ext.hyper[0], ext.hyper[1])  # "shark", once per hyponym
    assert ext.names[0] @ ext.names[1] > ext.names[0] @ ext.names[2]  # real text vectors: sharks are closer
    monkeypatch.setattr(baselines, "build_text_encoder", lambda spec: pytest.fail("embedded twice"))
    again = baselines.external_semantics(tmp_path, "minilm", few)
    assert torch.equal(again.names, ext.names) and torch.equal(again.hyper, ext.hyper)
