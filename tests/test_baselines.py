"""The seven baselines on a small, text-aligned two-modality toy under the MMHCL protocol.

Features are a linear image of the class semantic vectors plus noise, so a method that
learns the seen classes well scores high on them, and a zero-shot method that transfers
through the semantics also recognises the classes its modality never saw.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from cscf_model.baselines import BASELINES, Baseline, ExternalSemantics, create_baseline
from cscf_model import TrainConfig, TrainData

N_CLASSES, D_S, DIMS = 16, 8, (32, 24)
ZERO_SHOT = ("ZLA", "DGZ", "DSECN")
CFG = TrainConfig(epochs=20, batch_size=64, seed=0, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Models this small spend their time in thread hand-offs, not arithmetic: on a busy
    # 2-core machine one thread is several times faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Toy:
    """Modality A saw classes 0-7, B saw 8-15. Test: 20 samples per class per modality."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.class_emb = torch.randn(N_CLASSES, D_S, generator=g)
        self.seen = torch.zeros(2, N_CLASSES, dtype=torch.bool)
        self.seen[0, : N_CLASSES // 2] = True
        self.seen[1, N_CLASSES // 2 :] = True
        maps = [torch.randn(D_S, d, generator=g) / D_S**0.5 for d in DIMS]

        def draw(m: int, classes: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = classes.repeat_interleave(k)
            x = self.class_emb[y] @ maps[m] + 0.5 * torch.randn(len(y), DIMS[m], generator=g) + 3.0
            return x, y

        # DSECN's external class names: random vectors stand in for embedded names here.
        self.external = ExternalSemantics(torch.randn(40, D_S, generator=g), torch.randn(10, D_S, generator=g),
                                          torch.arange(10))
        train = [draw(m, self.seen[m].nonzero().squeeze(1), 40) for m in range(2)]
        self.train = TrainData([x for x, _ in train], [y for _, y in train])
        self.test = [draw(m, torch.arange(N_CLASSES), 20) for m in range(2)]

    def alone(self, m: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Modality m's test samples shown through m only: features, present, labels."""
        x, y = self.test[m]
        feats = [torch.zeros(len(y), d) for d in DIMS]
        feats[m] = x
        present = torch.zeros(len(y), 2, dtype=torch.bool)
        present[:, m] = True
        return feats, present, y


def accuracy(model: Baseline, toy: Toy, m: int, seen_classes: bool) -> float:
    feats, present, y = toy.alone(m)
    pred = model.predict(feats, present).scores.argmax(1)
    rows = toy.seen[m][y] == seen_classes
    return 100.0 * float((pred[rows] == y[rows]).float().mean())


@pytest.fixture(scope="module")
def toy() -> Toy:
    return Toy()


@dataclasses.dataclass
class Trained:
    name: str
    model: Baseline
    losses: list[float]
    seconds: float


_TRAINED: dict[str, Trained] = {}


@pytest.fixture
def trained(toy: Toy, request: pytest.FixtureRequest) -> Trained:
    """Each method trained once per session on the toy (the tests below share it)."""
    name = request.param
    if name not in _TRAINED:
        model = create_baseline(name, list(DIMS), toy.class_emb, toy.seen, toy.external)
        start = time.perf_counter()
        losses = model.fit(toy.train, CFG)
        _TRAINED[name] = Trained(name, model, losses, time.perf_counter() - start)
    return _TRAINED[name]


@pytest.mark.parametrize("trained", BASELINES, indirect=True)
def test_learns_each_modalitys_seen_classes(trained: Trained, toy: Toy) -> None:
    assert len(trained.losses) == CFG.epochs and trained.losses[-1] < trained.losses[0]
    a_s, b_s = accuracy(trained.model, toy, 0, True), accuracy(trained.model, toy, 1, True)
    print(f"{trained.name}: A_s {a_s:.1f} B_s {b_s:.1f} in {trained.seconds:.1f}s", end=" ")
    # ZLA drops at test the log r (r = 30) it added to seen-class logits in training: it
    # trades seen-class accuracy for unseen by design. Chance is 100/16.
    floor = 60 if trained.name == "ZLA" else 80
    assert a_s > floor and b_s > floor


@pytest.mark.parametrize("trained", ZERO_SHOT, indirect=True)
def test_zero_shot_methods_recognise_unseen_classes(trained: Trained, toy: Toy) -> None:
    assert accuracy(trained.model, toy, 0, False) > 25 and accuracy(trained.model, toy, 1, False) > 25


@pytest.mark.parametrize("trained", [n for n in BASELINES if n not in ZERO_SHOT], indirect=True)
def test_fusion_methods_never_predict_a_modalitys_unseen_classes(trained: Trained, toy: Toy) -> None:
    """As in the paper's Table 1 (A_u = B_u = 0): a softmax head over all classes only
    ever saw modality m's seen classes as labels of m's samples."""
    assert accuracy(trained.model, toy, 0, False) < 10 and accuracy(trained.model, toy, 1, False) < 10


@pytest.mark.parametrize("trained", BASELINES, indirect=True)
def test_predict_mixes_unimodal_and_bimodal_rows(trained: Trained, toy: Toy) -> None:
    model = trained.model
    (xa, ya), (xb, _) = toy.test
    n = len(ya)
    present = torch.ones(n, 2, dtype=torch.bool)
    present[: n // 3, 1] = False  # A only
    present[n // 3 : 2 * n // 3, 0] = False  # B only
    feats = [xa.clone(), xb.clone()]
    out = model.predict(feats, present)
    assert out.scores.shape == (n, N_CLASSES) and out.dominant.shape == (n,)
    assert torch.isfinite(out.scores).all()
    assert (out.dominant[: n // 3] == 0).all() and (out.dominant[n // 3 : 2 * n // 3] == 1).all()
    assert set(out.dominant[2 * n // 3 :].tolist()) <= {0, 1}
    # Whatever sits in an absent modality's rows is ignored.
    feats[1][~present[:, 1]] = 1e3
    feats[0][~present[:, 0]] = -7.0
    assert torch.equal(model.predict(feats, present).scores, out.scores)


@pytest.mark.parametrize("trained", ZERO_SHOT, indirect=True)
def test_zero_shot_pair_takes_the_more_confident_model(trained: Trained, toy: Toy) -> None:
    model = trained.model
    (xa, ya), (xb, _) = toy.test
    both = model.predict([xa, xb], torch.ones(len(ya), 2, dtype=torch.bool))
    alone = [model.predict([xa, xb], toy.alone(m)[1]).scores for m in (0, 1)]
    assert set(both.dominant.tolist()) == {0, 1}  # the toy has rows each way
    for m in (0, 1):
        rows = both.dominant == m
        assert torch.equal(both.scores[rows], alone[m][rows])
        assert (alone[m][rows].amax(1) >= alone[1 - m][rows].amax(1)).all()


@pytest.mark.parametrize("name", BASELINES)
def test_training_is_deterministic_given_the_seed(name: str, toy: Toy) -> None:
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3, device="cpu")
    feats, present, _ = toy.alone(0)

    def scores(seed: int) -> torch.Tensor:
        torch.manual_seed(seed * 7 + 1)  # the global RNG state before fit must not matter
        model = create_baseline(name, list(DIMS), toy.class_emb, toy.seen, toy.external)
        model.fit(toy.train, dataclasses.replace(cfg, seed=seed))
        return model.predict(feats, present).scores

    first = scores(3)
    assert torch.equal(first, scores(3))
    assert not torch.equal(first, scores(4))


@pytest.mark.parametrize("trained", BASELINES, indirect=True)
def test_state_dict_rebuilds_the_trained_model(trained: Trained, toy: Toy) -> None:
    model = trained.model
    rebuilt = create_baseline(trained.name, list(DIMS), toy.class_emb, toy.seen, toy.external)
    rebuilt.load_state_dict(model.state_dict())
    feats, present, _ = toy.alone(1)
    assert torch.equal(rebuilt.predict(feats, present).scores, model.predict(feats, present).scores)


def test_bad_inputs_are_named(toy: Toy) -> None:
    with pytest.raises(ValueError, match="unknown baseline 'CLIP'"):
        create_baseline("CLIP", list(DIMS), toy.class_emb, toy.seen)
    with pytest.raises(ValueError, match="seen must be"):
        create_baseline("TMC", list(DIMS), toy.class_emb, toy.seen[:, :4])
    model = create_baseline("TMC", list(DIMS), toy.class_emb, toy.seen)
    swapped = TrainData(toy.train.features, [toy.train.labels[1], toy.train.labels[0]])
    with pytest.raises(ValueError, match="modality 0: training labels .* are not its seen classes"):
        model.fit(swapped, CFG)
    with pytest.raises(ValueError, match="modality 1: features"):
        model.fit(TrainData([toy.train.features[0], toy.train.features[0]], toy.train.labels), CFG)
