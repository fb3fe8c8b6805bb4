"""The CSCF model as users build, train, checkpoint and run it (shapes, configs, training)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import pytest
import torch

from cscf_model import (
    CSCF,
    TrainConfig,
    TrainData,
    create_model,
    list_models,
    load_config,
    model_from_checkpoint,
    train,
)
from cscf_model.config import config_from_dict
from cscf_model.trainer import checkpoint_state

N_CLASSES, D_S, DIMS = 6, 16, [20, 12]
SEEN = torch.tensor([[True] * 3 + [False] * 3, [False] * 3 + [True] * 3])  # A: 0-2, B: 3-5


def _class_emb() -> torch.Tensor:
    """Orthonormal class vectors, so classes are equally far apart in semantic space."""
    q, _ = torch.linalg.qr(torch.randn(D_S, N_CLASSES, generator=torch.Generator().manual_seed(0)))
    return q.T.contiguous()  # (N, d_s)


CLASS_EMB = _class_emb()


def _features(labels: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """Modality m sees class c as class_emb[c] through a fixed random projection, plus noise."""
    proj = torch.randn(D_S, DIMS[m], generator=torch.Generator().manual_seed(100 + m))
    noise = torch.randn(len(labels), DIMS[m], generator=torch.Generator().manual_seed(seed))
    return CLASS_EMB[labels] @ proj * 3 + 0.1 * noise


def _mmhcl_data(per_class: int, seed: int) -> TrainData:
    """Modality m records only the classes it sees (its rows of SEEN)."""
    labels = [SEEN[m].nonzero().squeeze(1).repeat_interleave(per_class) for m in range(2)]
    return TrainData([_features(y, m, seed + m) for m, y in enumerate(labels)], labels)


def _model(name: str = "B+O+D+C", seed: int = 0, **overrides: Any) -> CSCF:
    """A shipped config with its weights drawn from `seed`."""
    torch.manual_seed(seed)
    return create_model(name, DIMS, CLASS_EMB, SEEN, **overrides)


def _inputs(batch: int, present: list[list[bool]] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random features for both modalities and a (batch, 2) presence mask (default: both)."""
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(batch, d, generator=g) for d in DIMS]
    mask = torch.ones(batch, 2, dtype=torch.bool) if present is None else torch.tensor(present)
    return feats, mask


FAST = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=3, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are tiny; on a shared 2-core machine intra-op threads only contend
    (measured: 27 s vs 1.7 s for the training test under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- shapes, configs


@pytest.mark.parametrize("name, k", [("B+O+D+C", 4), ("B", 1)])
def test_output_shapes(name: str, k: int) -> None:
    model = _model(name).eval()
    out = model(*_inputs(5))
    assert out.logits_k.shape == (2, k, 5, N_CLASSES)
    assert out.logits.shape == (2, 5, N_CLASSES)
    assert out.u.shape == (2, 5) and out.dominant.shape == (5,)
    assert out.fused.shape == (5, N_CLASSES)
    assert torch.allclose(out.logits, out.logits_k.mean(1))


def test_shipped_configs() -> None:
    assert list_models() == ["B", "B+O", "B+O+D", "B+O+D+C", "CSCF", "CSCF (paper)"]
    cscf = load_config("CSCF").to_dict()
    assert (cscf["router"], cscf["fusion"]) == ("gate", "gate")  # the learned router (issue 12)
    for name, fusion in [("B+O", "mean"), ("B+O+D", "dominant"), ("B+O+D+C", "csmf")]:
        d = load_config(name).to_dict()
        assert {k for k in d if d[k] != cscf[k]} == {"name", "fusion", "router"}
        assert (d["name"], d["fusion"], d["router"]) == (name, fusion, "dmss")
    paper = load_config("CSCF (paper)")
    assert (paper.router, paper.fusion, paper.keep_geometry, paper.calibration) == ("dmss", "csmf", False, "none")
    b = load_config("B")
    assert (b.head, b.fusion, len(b.mappers)) == ("linear", "mean", 1)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: config_from_dict({"name": "x", "fusoin": "csmf"}), "fusoin"),
        (lambda: load_config("CSCF").replace(fusion="max"), "fusion"),
        (lambda: load_config("CSCF").replace(missing="drop"), "missing"),
        (lambda: load_config("CSCF").replace(top_k=0), "top_k"),
        (lambda: _model(head="knn"), "head"),
        (lambda: _model(loss_classes="some"), "loss_classes"),
        (lambda: _model(mappers=[{"kind": "transformer"}]), "kind"),
        (lambda: load_config("CSCFX"), "CSCFX"),
        (lambda: create_model("CSCF", DIMS, CLASS_EMB, SEEN[:1]), "seen"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_unknown_mapper_key_raises_value_error() -> None:
    with pytest.raises(ValueError, match="hiden"):
        config_from_dict({"name": "x", "mappers": [{"kind": "mlp", "hiden": [64]}]})


def test_cscf_mappers_are_k_different_architectures() -> None:
    mappers = _model().mappers[0]
    assert len(mappers) == 4
    assert len({repr(m) for m in mappers}) == 4
    assert len({sum(p.numel() for p in m.parameters()) for m in mappers}) == 4


# ----------------------------------------------------------------------------- input statistics, checkpoints


def test_input_stats_are_buffers_and_make_the_model_scale_invariant() -> None:
    data = _mmhcl_data(per_class=10, seed=1)
    model = _model().eval()
    model.fit_input_stats(data.features)
    x = data.features[0]
    assert torch.allclose(model.in_mean_0, x.mean(0)) and torch.allclose(model.in_std_0, x.std(0))
    assert {"in_mean_0", "in_std_0", "in_mean_1", "in_std_1"} <= set(model.state_dict())
    # the same weights on features shifted and rescaled per dimension give the same logits
    shifted = _model().eval()
    a, b = torch.linspace(0.5, 4, DIMS[0]), torch.linspace(-3, 3, DIMS[0])
    shifted.fit_input_stats([x * a + b, data.features[1]])
    present = torch.tensor([[True, False]] * len(x))
    feats = [x, torch.zeros(len(x), DIMS[1])]
    with torch.no_grad():
        base = model(feats, present).logits_k[0]
        moved = shifted([x * a + b, feats[1]], present).logits_k[0]
    assert torch.allclose(base, moved, atol=1e-4)


def test_checkpoint_round_trip_gives_identical_outputs_and_stats() -> None:
    data = _mmhcl_data(per_class=10, seed=1)
    model = _model(top_k=2, learn_scale=True)
    model.fit_input_stats(data.features)
    with torch.no_grad():
        model.log_scale.add_(0.3)  # a learnt value, not the config's
    state = checkpoint_state(model, torch.optim.Adam(model.parameters()), 0, FAST, [1.0])
    rebuilt = model_from_checkpoint(state).eval()
    model.eval()
    assert rebuilt.config == model.config
    assert torch.equal(rebuilt.in_std_1, data.features[1].std(0))
    feats, present = _inputs(6, [[True, True], [True, False], [False, True]] * 2)
    with torch.no_grad():
        a, b = model(feats, present), rebuilt(feats, present)
    for field in dataclasses.fields(a):
        assert torch.equal(getattr(a, field.name), getattr(b, field.name)), field.name


# ----------------------------------------------------------------------------- fusion modes, missing modalities


def test_fusion_override_mean_and_dominant() -> None:
    model = _model().eval()
    feats, present = _inputs(3, [[True, True], [True, False], [False, True]])
    with torch.no_grad():
        mean, dom = model(feats, present, fusion="mean"), model(feats, present, fusion="dominant")
    lo = mean.logits
    assert torch.allclose(mean.fused, torch.stack([(lo[0, 0] + lo[1, 0]) / 2, lo[0, 1], lo[1, 2]]))
    assert dom.dominant[1:].tolist() == [0, 1]
    assert torch.equal(dom.fused, lo[dom.dominant, torch.arange(3)])


def test_missing_mask_vs_zero() -> None:
    masked = _model(missing="mask").eval()
    zeroed = _model(missing="zero").eval()
    zeroed.load_state_dict(masked.state_dict())
    feats, present = _inputs(2, [[True, False], [True, True]])
    feats[1][0] = 1e3  # garbage in the absent row: must not matter in either mode
    with torch.no_grad():
        m, z = masked(feats, present), zeroed(feats, present)
        zero_logits = zeroed.modality_logits(1, torch.zeros(1, DIMS[1])).mean(0)[0]
    # mask: B is out of DMSS and CSMF for sample 0
    assert m.u[1, 0].item() == math.inf and m.dominant[0].item() == 0
    assert torch.equal(m.fused[0], m.logits[0, 0])
    # zero: B is fed a zero vector and takes part as if present
    assert torch.isfinite(z.u).all()
    assert torch.allclose(z.logits[1, 0], zero_logits)
    assert not torch.allclose(z.fused[0], z.logits[0, 0])
    # a bimodal sample is the same in both modes
    assert torch.equal(m.u[:, 1], z.u[:, 1]) and m.dominant[1] == z.dominant[1]
    assert torch.equal(m.fused[1], z.fused[1])


@pytest.mark.parametrize("missing", ["mask", "zero"])
def test_encode_once_then_fuse_is_the_forward_pass(missing: str) -> None:
    """Evaluation encodes the test set once (in chunks) and fuses it under each subset's presence
    mask (tasks.evaluation.scoring): that must equal the forward pass on the same rows and mask."""
    model = _model(missing=missing).eval()
    model.margin.fill_(0.7)
    feats, _ = _inputs(6)
    present = torch.tensor([[True, True], [True, False], [False, True]] * 2)
    with torch.no_grad():
        for encoded in (model.encode(feats), model.encode_for_scoring(feats), model.encode_for_scoring(feats, chunk=4)):
            for fusion in ("mean", "dominant", "csmf"):
                rows = torch.tensor([4, 1, 2])
                want = model([x[rows] for x in feats], present[rows], fusion=fusion)
                got = model.fuse(encoded.rows(rows), present[rows], fusion=fusion)
                assert torch.allclose(got.fused, want.fused, atol=1e-5) and torch.equal(got.dominant, want.dominant)
                assert torch.allclose(got.u, want.u)


# ----------------------------------------------------------------------------- training


def _seen_class_accuracy(model: CSCF, data: TrainData) -> list[float]:
    """Per modality, top-1 accuracy over all 6 classes on its own seen classes, shown alone."""
    accs = []
    for m, (x, y) in enumerate(zip(data.features, data.labels)):
        feats = [x if i == m else torch.zeros(len(x), d) for i, d in enumerate(DIMS)]
        present = torch.zeros(len(x), 2, dtype=torch.bool)
        present[:, m] = True
        with torch.no_grad():
            pred = model(feats, present).fused.argmax(1)
        accs.append(float((pred == y).float().mean()))
    return accs


def test_training_learns_each_modalitys_seen_classes() -> None:
    train_data, test_data = _mmhcl_data(per_class=40, seed=1), _mmhcl_data(per_class=20, seed=11)
    model = _model()
    assert max(_seen_class_accuracy(model.eval(), test_data)) < 0.9  # not solved before training
    model, losses = train(model, train_data, dataclasses.replace(FAST, epochs=6))
    assert losses[-1] < losses[0] / 2
    assert min(_seen_class_accuracy(model, test_data)) > 0.9


def _state_at(epoch: int, states: list[dict[str, Any]]) -> dict[str, Any]:
    return next(s for s in states if s["epoch"] == epoch)


def test_resumed_training_ends_with_the_same_weights() -> None:
    data = _mmhcl_data(per_class=10, seed=1)
    straight, straight_losses = train(_model(seed=0), data, FAST)
    states: list[dict[str, Any]] = []
    train(_model(seed=0), data, dataclasses.replace(FAST, epochs=2), on_epoch_end=states.append)
    resumed, resumed_losses = train(_model(seed=99), data, FAST, resume=_state_at(1, states))
    assert resumed_losses == straight_losses
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_state_passed_to_on_epoch_end_is_a_snapshot() -> None:
    data = _mmhcl_data(per_class=10, seed=1)
    one: list[dict[str, Any]] = []
    train(_model(seed=0), data, dataclasses.replace(FAST, epochs=1), on_epoch_end=one.append)
    two: list[dict[str, Any]] = []
    train(_model(seed=0), data, dataclasses.replace(FAST, epochs=2), on_epoch_end=two.append)
    epoch0 = _state_at(0, two)
    for key, value in one[0]["model"].items():
        assert torch.equal(value, epoch0["model"][key]), key
    assert epoch0["optimizer"]["state"][0]["step"].item() == one[0]["optimizer"]["state"][0]["step"].item()


# ----------------------------------------------------------------------------- batched mappers, bf16 (issue 22)


def _separate(model: CSCF) -> CSCF:
    """The same model running each modality's mappers one after another (the code before issue 22)."""
    reference = _model(model.config.name)
    reference.load_state_dict(model.state_dict())
    for bank in reference.mappers:
        bank.batched = False
    return reference.train(model.training)


@pytest.mark.parametrize("name", ["CSCF", "B"])
def test_batched_mappers_equal_the_separate_ones(name: str) -> None:
    """The four CSCF mappers (linear, mlp, LayerNorm'd deep mlp, residual) run as one wide
    and one batched matmul give each mapper's own output; so does the linear head of B."""
    model = _model(name).eval()
    z = torch.randn(9, DIMS[0], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.mappers[0](z)
        want = torch.stack([f(z) for f in model.mappers[0]])
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-6


def test_state_dict_layout_is_that_of_separate_mappers_and_old_weights_predict_the_same() -> None:
    """The model folder is a contract: weights saved by the one-mapper-at-a-time model load
    under the same keys, and the batched model predicts what it predicted."""
    model = _model("CSCF").eval()
    old_layout = torch.nn.ModuleList(torch.nn.ModuleList(f for f in bank) for bank in model.mappers)
    assert [f"mappers.{k}" for k in old_layout.state_dict()] == [k for k in model.state_dict() if k.startswith("mappers.")]
    old = _separate(model).eval()
    fresh = _model("CSCF", seed=5).eval()
    fresh.load_state_dict(old.state_dict())
    feats, present = _inputs(6, [[True, True], [True, False], [False, True]] * 2)
    with torch.no_grad():
        a, b = old(feats, present, router="dmss", fusion="csmf"), fresh(feats, present, router="dmss", fusion="csmf")
    assert (a.fused - b.fused).abs().max() < 1e-5 and torch.equal(a.dominant, b.dominant)


def test_batched_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales() -> None:
    from cscf_model.mappers import _pointwise

    dropout, y = torch.nn.Dropout(0.2), torch.ones(1000, 1000)
    torch.manual_seed(0)
    out = _pointwise(dropout, y)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.002  # 1e6 draws: 5 standard deviations is 0.002
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / 0.8))
    assert torch.equal(_pointwise(torch.nn.Dropout(0.0), y), y)
    assert torch.equal(_pointwise(dropout.eval(), y), y)


def test_encode_on_present_rows_gives_their_logits_and_zeros_elsewhere() -> None:
    model = _model("CSCF").eval()
    feats, present = _inputs(6, [[True, False], [False, True], [True, False]] * 2)
    with torch.no_grad():
        full, some = model.encode(feats).raw_k, model.encode(feats, present=present).raw_k
    for m in range(2):
        rows = present[:, m]
        assert torch.allclose(some[m][:, rows], full[m][:, rows], atol=1e-5)
        assert torch.equal(some[m][:, ~rows], torch.zeros_like(some[m][:, ~rows]))


def test_bf16_logits_are_close_to_fp32_and_the_head_stays_fp32() -> None:
    """bf16 keeps 8 bits of mantissa (rounding 2^-9 relative): through the mappers the logits
    (scale 30, up to 22 here) move by 0.18 at most (measured), the top class on 99.8% of rows."""
    model = _model("CSCF").eval()
    feats, present = _inputs(64)
    with torch.no_grad():
        fp32 = model.encode(feats).raw_k
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.encode(feats).raw_k
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.5
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.98


def test_precision_auto_resolves_to_bf16_only_where_it_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from cscf_model.trainer import resolve_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for avx512_bf16, amx, want in [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", cpu) == want
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    for native, want in [(True, "bf16"), (False, "fp32")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, v=native: v)
        assert resolve_precision("auto", cuda) == want
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpoints_record_the_resolved_precision_and_both_precisions_learn(precision: str) -> None:
    from cscf_model.trainer import resolve_precision

    data = _mmhcl_data(per_class=20, seed=1)
    states: list[dict[str, Any]] = []
    model, losses = train(_model(), data, dataclasses.replace(FAST, precision=precision), on_epoch_end=states.append)
    assert states[-1]["train_config"]["precision"] == precision
    assert losses[-1] < losses[0] / 2
    auto: list[dict[str, Any]] = []
    train(_model(), data, dataclasses.replace(FAST, epochs=1), on_epoch_end=auto.append)
    assert auto[0]["train_config"]["precision"] == resolve_precision("auto", torch.device("cpu"))
