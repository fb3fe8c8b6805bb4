"""The routing ceiling and routing accuracy on hand-set logits, three modalities with overlapping seen sets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cscf_model import CSCFOutput, Encoded, TrainData
from tasks.training import mmhcl_data
from cscf_model.metrics import gzsl_scores
from tasks.evaluation.scoring import (
    cscf_scorer, encode_test, evaluate_method, routing_by_pattern, routing_ceiling, subset_sizes,
)

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


class PerSampleStub(nn.Module):
    """Encodes test sample i as logits[:, i]; its dominant modality is the shown one with the
    lowest u[:, i] (carried in the gate-logit slot), and it predicts that modality's argmax."""

    def __init__(self, logits: torch.Tensor, u: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.u = logits, u

    def encode_for_scoring(self, features: list[torch.Tensor]) -> Encoded:
        rows = features[0][:, 0].long()
        return Encoded(self.logits[:, rows], None, self.u[:, rows])

    def fuse(self, enc: Encoded, present: torch.Tensor, fusion: str | None = None, router: str | None = None) -> CSCFOutput:
        n = enc.raw.shape[1]
        u = enc.gate_logit.masked_fill(~present.T, torch.inf)
        dominant = u.argmin(0)
        return CSCFOutput(None, torch.zeros_like(enc.raw), enc.raw, u, dominant, enc.raw[dominant, torch.arange(n)])


def _stub_data(seen: torch.Tensor, labels: list[int], available: torch.Tensor, modalities: list[str]) -> mmhcl_data.MMHCLData:
    n, labels = len(labels), torch.tensor(labels)
    index = torch.arange(n, dtype=torch.float32)[:, None]
    test = mmhcl_data.TestSet([f"s{i}" for i in range(n)], labels, seen[:, labels].T, [index] * len(modalities), available)
    empty = TrainData([torch.zeros(0, 1)] * len(modalities), [torch.zeros(0, dtype=torch.long)] * len(modalities))
    n_classes = seen.shape[1]
    return mmhcl_data.MMHCLData([f"c{c}" for c in range(n_classes)], modalities, torch.eye(n_classes), seen, empty, test)


def _one_hot_logits(picks: list[list[tuple[int, float]]], n_classes: int) -> torch.Tensor:
    """(M, n, N) logits: modality m's logit for sample i is `value` at class `c` of picks[m][i], 0 elsewhere."""
    out = torch.zeros(len(picks), len(picks[0]), n_classes)
    for m, row in enumerate(picks):
        for i, (c, value) in enumerate(row):
            out[m, i, c] = value
    return out


def test_gzsl_s_u_h_on_the_samples_showing_every_modality() -> None:
    """The AV-GZSL protocol through evaluate_method (what metrics.json writes): a and b both
    saw classes 0 and 1; 2 and 3 are unseen. Modality b dominates (u lower) wherever shown."""
    seen = torch.tensor([[True, True, False, False], [True, True, False, False]])
    labels = [0, 1, 2, 3, 0, 2]
    available = torch.tensor([[True, True]] * 5 + [[True, False]])  # s5 shows a only: not in `all`
    # b predicts 0, 0, 2, 2, 0 on s0..s4; a predicts 2 on s5 (right, but s5 must not count)
    logits = _one_hot_logits([[(1, 1.0)] * 5 + [(2, 1.0)], [(0, 1.0), (0, 1.0), (2, 1.0), (2, 1.0), (0, 1.0), (0, 1.0)]], 4)
    model = PerSampleStub(logits, torch.tensor([[1.0] * 6, [0.0] * 6]))
    data = _stub_data(seen, labels, available, ["a", "b"])
    scores, _, _ = evaluate_method(cscf_scorer(model, encode_test(model, data)), data)
    # S: seen-class samples of `all` are s0 (0->0 right), s1 (1->0 wrong), s4 (0->0 right): 2/3 = 66.67
    # U: unseen-class samples of `all` are s2 (2->2 right), s3 (3->2 wrong): 1/2 = 50
    # H = 2 * (200/3) * 50 / (200/3 + 50) = (20000/3) / (350/3) = 400/7 = 57.142857...
    # (s5 counted as well would make U 2/3 and H 66.67)
    assert scores["S"] == pytest.approx(200 / 3) and scores["U"] == pytest.approx(50.0)
    assert scores["H"] == pytest.approx(400 / 7)
    assert scores["all"] == pytest.approx(60.0)  # 3 of s0..s4 right
    # seen sets that differ (b saw class 2 instead of 1): no S, U, H
    other = _stub_data(torch.tensor([[True, True, False, False], [True, False, True, False]]), labels, available, ["a", "b"])
    scores, _, _ = evaluate_method(cscf_scorer(model, encode_test(model, other)), other)
    assert not {"S", "U", "H"} & set(scores)


def test_gzsl_scores_by_hand() -> None:
    seen = torch.tensor([True, True, True, False, False])  # classes 0-2 seen, 3-4 unseen
    labels = torch.tensor([0, 0, 1, 2, 2, 3, 3, 4])
    pred = torch.tensor([0, 1, 1, 2, 4, 3, 0, 4])
    got = gzsl_scores(pred, labels, seen)
    # S: labels 0,0,1,2,2 predicted 0,1,1,2,4 -> right, wrong, right, right, wrong: 3/5 = 60
    # U: labels 3,3,4 predicted 3,0,4 -> right, wrong, right: 2/3 = 66.67
    # H = 2 * 60 * (200/3) / (60 + 200/3) = 8000 / (380/3) = 24000/380 = 63.157894...
    assert got["S"] == pytest.approx(60.0) and got["U"] == pytest.approx(200 / 3)
    assert got["H"] == pytest.approx(24000 / 380, abs=1e-4)  # accuracies are float32 means
    # both 0 -> H 0; no unseen-class sample -> U and H None
    assert gzsl_scores(torch.tensor([1, 3]), torch.tensor([0, 4]), seen) == {"S": 0.0, "U": 0.0, "H": 0.0}
    assert gzsl_scores(torch.tensor([0]), torch.tensor([0]), seen) == {"S": 100.0, "U": None, "H": None}


def test_routing_by_pattern_next_to_accuracy_and_ceiling() -> None:
    """a saw classes 0 and 1, b saw 1 and 2, class 3 nobody. Patterns of the samples showing
    both: all[a+b] (class 1: s5, s6), all[a] (class 0: s0-s4), all[b] (class 2: s7), all[none]
    (class 3: s8); s9 shows a only (given[a], in no pattern)."""
    seen = torch.tensor([[True, True, False, False], [False, True, True, False]])
    labels = [0, 0, 0, 0, 0, 1, 1, 2, 3, 1]
    available = torch.tensor([[True, True]] * 9 + [[True, False]])
    # (class, logit) each modality gives each sample
    a = [(0, 1.0), (0, 1.0), (1, 1.0), (0, 1.0), (3, 1.0), (1, 1.0), (0, 5.0), (0, 1.0), (0, 1.0), (1, 1.0)]
    b = [(1, 1.0), (2, 1.0), (1, 1.0), (1, 1.0), (0, 1.0), (1, 1.0), (1, 7.0), (2, 1.0), (3, 2.0), (0, 1.0)]
    dominant_b = {1, 5, 8}  # the router (lowest u) picks b on these samples, a on the others
    u = torch.tensor([[float(i in dominant_b) for i in range(10)], [float(i not in dominant_b) for i in range(10)]])
    model = PerSampleStub(_one_hot_logits([a, b], 4), u)
    data = _stub_data(seen, labels, available, ["a", "b"])
    encoded = encode_test(model, data)
    scores, _, routing = evaluate_method(cscf_scorer(model, encoded), data)
    got = routing_by_pattern(scores, routing, routing_ceiling(model, encoded, data), subset_sizes(data))
    assert list(got) == ["all[a+b]", "all[a]", "all[b]", "all[none]"]
    # all[a] (class 0, only a saw it), s0-s4: dominant a, b, a, a, a -> routing 4/5 = 80;
    # predicted (dominant's class) 0, 2, 1, 0, 3 -> accuracy 2/5 = 40;
    # ceiling (a alone) 0, 0, 1, 0, 3 -> 3/5 = 60
    assert got["all[a]"] == {"routing": pytest.approx(80.0), "accuracy": pytest.approx(40.0),
                             "ceiling": pytest.approx(60.0), "samples": 5}
    # all[a+b] (class 1, both saw it): any dominant is right -> 100; s5 b->1 right, s6 a->0 wrong -> 50;
    # ceiling: mean of a and b: s5 class 1; s6 class 0 at 5/2, class 1 at 7/2 -> class 1 -> 100
    assert got["all[a+b]"] == {"routing": 100.0, "accuracy": 50.0, "ceiling": 100.0, "samples": 2}
    # all[b] (class 2), s7: dominant a (wrong) predicts 0 (wrong); b alone says 2 (ceiling right)
    assert got["all[b]"] == {"routing": 0.0, "accuracy": 0.0, "ceiling": 100.0, "samples": 1}
    # all[none] (class 3), s8: no modality saw it, routing not judged; b says 3 (right);
    # ceiling: mean of both: class 0 at 1/2, class 3 at 2/2 -> right
    assert got["all[none]"] == {"routing": None, "accuracy": 100.0, "ceiling": 100.0, "samples": 1}
    # overall (evaluate.py's router_routing_accuracy): s0-s7 judged, right on s0, s2, s3, s4, s5, s6 -> 6/8
    assert routing["all"] == pytest.approx(75.0)


def test_run_summary_names_cscf_router_and_lists_patterns() -> None:
    from tasks.evaluation.report import render_report, run_summary

    patterns = {"all[a+b]": {"routing": 100.0, "accuracy": 50.0, "ceiling": 100.0, "samples": 2},
                "all[none]": {"routing": None, "accuracy": 25.0, "ceiling": 0.0, "samples": 4}}
    metrics = {"dataset": "d", "seed": 1, "modalities": ["a", "b", "c"],
               "classes": {"seen": {"a": ["x", "y"], "b": ["y"], "c": ["z"]}, "all": ["x", "y", "z", "w"]},
               "methods": {"CSCF": {"all": 40.0, "all[a+b]": 50.0, "all[none]": 25.0, "acc_mix": 37.5}},
               "diagnostics": {"dmss_routing_accuracy": 12.5, "router_routing_accuracy": 87.5, "cscf_router": "gate",
                               "routing_by_pattern": patterns}}
    lines = run_summary(metrics, {"metrics.json": "o/metrics.json"}).splitlines()
    assert lines[3:] == ["CSCF routing accuracy (learned router): 87.50 %",
                         "  all[a+b]: routing 100.00 %, accuracy 50.00 %, ceiling 100.00 % (2 samples)",
                         "  all[none]: routing -, accuracy 25.00 %, ceiling 0.00 % (4 samples)",
                         "outputs: o/metrics.json"]
    # two disjoint modalities: no pattern lines; metrics without the router's figure: DMSS's, named so
    two = {**metrics, "modalities": ["a", "b"], "classes": {"seen": {"a": ["x"], "b": ["y"]}, "all": ["x", "y"]}}
    assert run_summary(two, {}).splitlines()[3:] == ["CSCF routing accuracy (learned router): 87.50 %", "outputs: "]
    old = {**two, "diagnostics": {"dmss_routing_accuracy": 12.5}}
    assert run_summary(old, {}).splitlines()[3] == "DMSS routing accuracy: 12.50 %"
    cells = lambda report: [[c.strip() for c in line.strip("| ").split("|")]  # noqa: E731
                            for line in report.splitlines() if line.startswith("| ")]
    report = render_report(metrics)
    assert ["Seen pattern", "test samples", "routing (learned router)", "CSCF accuracy", "routing ceiling"] in cells(report)
    assert ["all[a+b]", "2", "100.00", "50.00", "100.00"] in cells(report)
    assert ["all[none]", "4", "n/a", "25.00", "0.00"] in cells(report)
    assert "Generalized zero-shot" not in report
    metrics["methods"]["CSCF"] |= {"S": 50.0, "U": 25.0, "H": 100 / 3}
    report = render_report(metrics)
    assert "## Generalized zero-shot" in report and ["Method", "S", "U", "H"] in cells(report)
    assert ["CSCF", "50.00", "25.00", "33.33"] in cells(report)


def test_encodings_of_batches_concatenate_into_one() -> None:
    """Encoded.concat fills each batch into tensors allocated once, along each field's sample
    axis: the same as torch.cat of the batches, without holding both."""
    g = torch.Generator().manual_seed(0)
    batches = [Encoded(torch.randn(2, b, 3, generator=g), torch.randn(2, 4, b, 3, generator=g),
                       torch.randn(2, b, generator=g), (torch.rand(2, 4, b, generator=g), torch.rand(2, b, generator=g)))
               for b in (5, 1, 3)]
    got = Encoded.concat(iter(batches), 9)
    assert torch.equal(got.raw, torch.cat([e.raw for e in batches], 1))
    assert torch.equal(got.raw_k, torch.cat([e.raw_k for e in batches], 2))
    assert torch.equal(got.gate_logit, torch.cat([e.gate_logit for e in batches], 1))
    assert torch.equal(got.entropies[0], torch.cat([e.entropies[0] for e in batches], 2))
    assert torch.equal(got.entropies[1], torch.cat([e.entropies[1] for e in batches], 1))
    bare = Encoded.concat((Encoded(e.raw, None, None) for e in batches), 9)
    assert bare.raw_k is None and bare.gate_logit is None and bare.entropies is None
    with pytest.raises(ValueError, match="batches of 9 samples, 10 expected"):
        Encoded.concat(iter(batches), 10)
