"""The performance benchmarks at their smallest sizes: they run, measure what they claim, and report.

The whole `python -m benchmarks` takes minutes, so each part is run through its own
function; the cached-rerun part is covered by its floor (the cscf run it compares with
is tested in test_pipeline.py) and by its guard against a rerun that was not cached.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from benchmarks import __main__ as bench
from benchmarks import duckdb_queries, rerun, scale, scale_data, train
from benchmarks.scale_data import ScaleSize, write_scale_dataset
from cscf_model import MapperConfig, TrainConfig, create_model
from cscf_model.trainer import resolve_precision
from tasks.evaluation.report import PAPER_TABLE1 as TABLE1, run_summary
from tasks.ingest.features import read_features, validate_features
from tasks.store.inputs import read_classes
from tasks.store.progress import progress
from tasks.store.query import connect
from tasks.stages import embed_figure
from tiny_data import write_dataset


class ScriptedClock:
    """`time` for one benchmark module: every span it measures (a start and an end reading
    of perf_counter, likewise of process_time) lasts the next scripted number of seconds,
    so that each figure has a value computed by hand from the script."""

    def __init__(self, wall: list[float], cpu: list[float]) -> None:
        self.spans = {"wall": list(wall), "cpu": list(cpu)}
        self._now = {"wall": 0.0, "cpu": 0.0}
        self._open = {"wall": False, "cpu": False}

    def _read(self, kind: str) -> float:
        if self._open[kind]:
            self._now[kind] += self.spans[kind].pop(0)
        self._open[kind] = not self._open[kind]
        return self._now[kind]

    def perf_counter(self) -> float:
        return self._read("wall")

    def process_time(self) -> float:
        return self._read("cpu")


def test_train_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each figure is what its meaning says, from the best time of each kind of run: the
    runs do their real work but report scripted durations, so every figure has a value
    computed by hand; checkpoint_mb is the size of the checkpoint files actually written,
    the FLOPs per sample are train.flops_per_sample's (checked by hand below)."""
    size = dataclasses.replace(train.SIZES["tiny"], repeats=2)
    monkeypatch.setitem(train.SIZES, "tiny", size)
    scripted = {"trainer": [4.0, 2.0], "bare": [1.0, 1.5], "checkpoint": [2.5, 3.0], "reference": [9.0, 8.0]}
    written: list[int] = []
    real_project, real_bare = train.train_project, train.train_bare

    def project(problem, cfg, checkpoint_dir=None):
        _, losses = real_project(problem, cfg, checkpoint_dir)
        if cfg.epochs != size.epochs:
            return 1000.0, losses  # the warm-up run, which no figure may include
        if checkpoint_dir is None:
            return scripted["trainer"].pop(0), losses
        written.extend(p.stat().st_size for p in checkpoint_dir.glob("epoch-*.pt"))
        return scripted["checkpoint"].pop(0), losses

    def bare(problem, cfg, reference=False):
        _, losses = real_bare(problem, cfg, reference)
        return scripted["reference" if reference else "bare"].pop(0), losses

    monkeypatch.setattr(train, "train_project", project)
    monkeypatch.setattr(train, "train_bare", bare)
    monkeypatch.setattr(train, "matmul_flop_rate", lambda precision: 1e9)
    figures = train.run(tiny=True)
    assert scripted == {"trainer": [], "bare": [], "checkpoint": [], "reference": []}  # every repeat ran
    assert len(written) == 2 * size.epochs  # one checkpoint per epoch, per repeat
    samples = size.samples * size.epochs  # 96 samples, 2 epochs: 192 samples trained per run
    flops, executed = train.flops_per_sample(train.make_problem(size), TrainConfig(epochs=size.epochs, device="cpu"))
    bits = 16.0 if resolve_precision("auto", torch.device("cpu")) == "bf16" else 32.0
    assert figures == pytest.approx({
        "train_samples_per_s": samples / 2.0,  # best trainer time 2.0 s
        "train_bare_samples_per_s": samples / 1.0,  # best bare time 1.0 s
        "train_ratio": 1.0 / 2.0,  # bare / trainer time
        "train_checkpoint_samples_per_s": samples / 2.5,
        "checkpoint_overhead_ratio": 2.5 / 2.0,
        "checkpoint_mb": max(written) / 2**20,
        "train_fp32_bare_samples_per_s": samples / 8.0,  # best reference time 8.0 s
        "train_speedup_vs_fp32_bare": 8.0 / 2.0,
        "train_precision_bits": bits,
        "train_gflop_per_s": flops * samples / 2.0 / 1e9,
        "matmul_gflop_per_s": 1.0,  # the scripted 1e9 FLOP/s
        "train_flop_fraction": flops * samples / 2.0 / 1e9,
        "train_executed_flop_fraction": executed * samples / 2.0 / 1e9,
    }, rel=1e-12)


def test_flops_per_sample_counts_the_matmuls_by_hand() -> None:
    """One linear mapper per modality (d = 24 and 16 -> d_s = 384), 6 classes. Forward per
    sample of modality m: d_m x 384 (mapper) + 384 x 6 (cosine head) multiply-adds, 768 d_m
    + 4608 FLOPs; counted 3x. As run, the backward is the mapper's weight gradient (no input
    gradient: it reads the features) and the head's input gradient (the class vectors are
    fixed): 2 x the forward. Half the 96 samples are in each modality."""
    problem = train.make_problem(train.SIZES["tiny"])
    linear = [MapperConfig(kind="linear")]
    problem.model = lambda seed: create_model("CSCF", [24, 16], problem.class_emb, problem.seen, mappers=linear)
    counted, executed = train.flops_per_sample(problem, TrainConfig(device="cpu"))
    forward = (768 * 24 + 4608 + 768 * 16 + 4608) / 2
    assert (counted, executed) == (3 * forward, 2 * forward)


def test_bare_loop_does_the_trainers_work() -> None:
    """Same weights, batches and dropout: the bare loop's losses are the trainer's, epoch by
    epoch; the fp32 reference loop trains the same model to nearly the same losses."""
    problem = train.make_problem(train.SIZES["tiny"])
    cfg = TrainConfig(epochs=3, batch_size=16, device="cpu")
    with train.one_thread():
        _, trainer_losses = train.train_project(problem, cfg)
        _, bare_losses = train.train_bare(problem, cfg)
        _, reference_losses = train.train_bare(problem, cfg, reference=True)
    assert len(trainer_losses) == 3
    assert bare_losses == pytest.approx(trainer_losses, rel=1e-5)
    assert reference_losses == pytest.approx(trainer_losses, rel=0.1)


def test_duckdb_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Best of 3 for each query, the CPU time of the best nearest-neighbour run (not the
    best CPU time of any run), and the ratio of the two best nearest-neighbour times, on a
    scripted clock: the count query's runs take 0.3, 0.1, 0.2 s, DuckDB's nearest
    neighbours 0.5, 0.4, 0.6 s (CPU 0.9, 0.7, 0.2 s) and NumPy's 0.8, 0.8, 0.2 s."""
    clock = ScriptedClock(wall=[0.3, 0.1, 0.2, 0.5, 0.4, 0.6, 0.8, 0.8, 0.2],
                          cpu=[0.5, 0.5, 0.5, 0.9, 0.7, 0.2, 0.1, 0.1, 0.1])
    monkeypatch.setattr(duckdb_queries, "time", clock)
    figures = duckdb_queries.run(tiny=True)
    assert clock.spans == {"wall": [], "cpu": []}  # 3 runs of each of the 3 timings
    assert figures == pytest.approx({
        "duckdb_rows": 2000.0,
        "duckdb_count_s": 0.1,
        "duckdb_knn_s": 0.4,
        "duckdb_knn_cpu_s": 0.7,  # the CPU time of the 0.4 s run
        "numpy_knn_s": 0.2,
        "duckdb_knn_ratio": 2.0,  # 0.4 / 0.2
    }, rel=1e-9)


def test_duckdb_queries_answer_right(tmp_path: Path) -> None:
    rows = 1000
    path = duckdb_queries.write_features(tmp_path, rows)
    con = connect(tmp_path)
    counts = con.sql(duckdb_queries.COUNT_SQL).fetchall()
    assert len(counts) == duckdb_queries.CLASSES
    assert sum(a + v for _, a, v in counts) == rows
    query = np.random.default_rng(3).standard_normal(duckdb_queries.DIM).astype(np.float32)
    nearest = duckdb_queries.nearest_sql(con, query)
    assert len(nearest) == duckdb_queries.K
    assert nearest == duckdb_queries.nearest_numpy(path, query)


def test_rerun_floor_runs_a_prefect_flow(tmp_path: Path) -> None:
    wall, cpu, stdout = rerun._timed(rerun.floor_command(tmp_path))
    assert stdout.strip() == "floor: Completed"
    assert 0 < cpu < 10 * wall


def test_rerun_refuses_a_run_that_was_not_cached() -> None:
    line = "stages: features=Cached, train[CSCF]=Completed"
    with pytest.raises(RuntimeError, match=r"not fully cached.*train\[CSCF\]"):
        rerun.cached_rerun([sys.executable, "-c", f"print({line!r})"])


def test_main_prints_one_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(duckdb_queries.ROWS, "default", duckdb_queries.ROWS["tiny"])  # not 1M rows in the suite
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "duckdb", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["duckdb_rows"] == duckdb_queries.ROWS["tiny"]
    # wall_s spans the whole part, which ran each of its three timed queries 3 times,
    # each run at least as long as the best one kept
    timed = figures["duckdb_count_s"] + figures["duckdb_knn_s"] + figures["numpy_knn_s"]
    assert figures["wall_s"] >= duckdb_queries.REPEATS * timed > 0
    assert figures["duckdb_knn_ratio"] == pytest.approx(figures["duckdb_knn_s"] / figures["numpy_knn_s"], rel=1e-12)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:4] == ["name", "value", "unit", "meaning"]
    shown = {line.split()[0]: float(line.split()[1]) for line in printed[1:]}
    assert shown.keys() == figures.keys()
    assert shown == pytest.approx(figures, rel=5e-3)  # the table shows the JSON's figures, to 3 digits


def test_main_rejects_an_unknown_part() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "training"])


def test_scale_dataset_is_vggsound_shaped_and_valid(tmp_path: Path) -> None:
    """271 classes, 1024-d audio and 512-d video per clip, and nothing the features stage refuses."""
    size = ScaleSize(1 / 600)
    features, classes = write_scale_dataset(tmp_path, size)
    table = read_features(features)
    names = set(read_classes(classes)["class_name"])
    assert len(names) == scale_data.CLASSES
    assert len(table) == 2 * (size.train + size.test)
    dims = {m: set(pc.list_value_length(table.filter(pc.equal(table["modality"], m))["vector"]).to_pylist())
            for m in ("audio", "video")}
    assert dims == {"audio": {scale_data.AUDIO_DIM}, "video": {scale_data.VIDEO_DIM}}
    good, rejected = validate_features(table, names, "scale")
    assert len(rejected) == 0 and len(good) == len(table)


def test_stage_process_reports_its_own_peak_memory(tmp_path: Path) -> None:
    """A stage runs in a fresh process, wired as `cscf run` wires it; its peak is its own,
    not the parent's (ru_maxrss would carry the parent's peak into the child)."""
    features, classes = write_dataset(tmp_path / "data")
    ballast = np.ones(1024 * 2**20 // 8)  # the parent's peak grows by 1 GiB
    costs = scale.measure_pipeline(features, classes, tmp_path / "ws", epochs=1, until="descriptions")
    parent_peak_mb = scale.peak_rss_mb()
    del ballast
    assert list(costs) == ["descriptions"]
    assert costs["descriptions"].seconds > 0
    assert 100 < costs["descriptions"].peak_mb < parent_peak_mb - 900
    assert list((tmp_path / "ws" / "descriptions").glob("*.parquet"))


def test_growth_table_and_scale_figures() -> None:
    results = {1 / 16: {"train[CSCF]": scale.StageCost(10.0, 900.0)}, 1 / 4: {"train[CSCF]": scale.StageCost(40.0, 1500.0)}}
    table = scale.growth_table(results)
    assert "| train[CSCF] | 10.0 | 40.0 | 900 | 1500 |" in table.splitlines()
    figures = scale.figures(results, train_ratio=0.9)
    assert figures["scale_train_cscf_s"] == 40.0 and figures["scale_train_cscf_s_at_1_16"] == 10.0
    assert figures["scale_peak_mb"] == 1500.0 and figures["scale_train_ratio"] == 0.9


def test_audioset_size_has_its_classes_and_at_13x_figures() -> None:
    """Above 1x the sizes are AudioSet's (527 classes, 13x: about 2 million training clips);
    their figures are suffixed `_at_13x` and the unsuffixed ones stay those of 1x."""
    audioset = scale_data.scale_size(13)
    assert (audioset.classes, scale_data.scale_size(1).classes) == (527, 271)
    assert 1.9e6 < audioset.train < 2.0e6 and audioset.train % 527 == 0
    results = {1.0: {"evaluate": scale.StageCost(70.0, 3000.0)}, 13.0: {"evaluate": scale.StageCost(900.0, 9000.0)}}
    figures = scale.figures(results, train_ratio=1.0)
    assert figures["scale_evaluate_s"] == 70.0 and figures["scale_fraction"] == 1.0
    assert figures["scale_evaluate_s_at_13x"] == 900.0 and figures["scale_peak_mb_at_13x"] == 9000.0
    assert figures["scale_train_clips_at_13x"] == audioset.train
    assert bench.meaning("scale_evaluate_peak_mb_at_13x") == (
        "MiB", "peak resident memory of stage evaluate, at 13x VGGSound's clips, AudioSet's 527 classes")
    assert bench.meaning("scale_peak_mb_at_13x")[1].endswith("at 13x VGGSound's clips, AudioSet's 527 classes")
    assert "13x = " in scale.growth_table(results) and "527 classes" in scale.growth_table(results)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_logs_every_few_epochs(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    log = logging.getLogger("cscf.test")
    with caplog.at_level(logging.INFO, "cscf.test"), progress("CSCF training", 20, log, stream=stream) as shown:
        for epoch in range(1, 21):
            shown.update(epoch, loss=1.0 / epoch)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10  # every second epoch: readable, not one line per epoch
    assert re.fullmatch(r"CSCF training: epoch 20/20, loss 0\.0500, \d+\.\d s elapsed", lines[-1])
    assert stream.getvalue() == ""  # no bar, no carriage returns in a log file


def test_progress_on_a_terminal_draws_a_bar(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    log = logging.getLogger("cscf.test")
    with caplog.at_level(logging.INFO, "cscf.test"), progress("CSCF training", 4, log, stream=stream) as shown:
        for epoch in range(1, 5):
            shown.update(epoch, loss=0.5)
    assert "CSCF training" in stream.getvalue() and "4/4" in stream.getvalue() and "loss=0.5000" in stream.getvalue()
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["CSCF training: 4 epochs"]


def test_training_stage_logs_epoch_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real stages, wired as `cscf run` wires them (without Prefect), on the tiny dataset:
    the training log says how far each training and calibration training got, and its loss."""
    from flows.params import LLMParams, PipelineParams
    from flows.pipeline import Wiring
    from tasks.stages import STAGES

    class InProcess(Wiring):
        def call(self, task: object, refresh: bool = False, **kwargs: object) -> str:
            return STAGES[task.name].run({"workspace": self.params.workspace, **kwargs})

    features, classes = write_dataset(tmp_path / "data")
    params = PipelineParams(features=str(features), classes=str(classes), workspace=str(tmp_path / "ws"), epochs=3,
                            device="cpu", llm=LLMParams(mode="offline"))
    with caplog.at_level(logging.INFO, "cscf.train"):
        InProcess(params).train
    lines = [r.getMessage() for r in caplog.records if r.name == "cscf.train"]
    for what in ("B training", "CSCF training", "CSCF calibration training"):
        assert [line for line in lines if re.match(rf"{what}: epoch 3/3, loss \d+\.\d{{4}}, \d+\.\d s elapsed$", line)], lines


def test_report_artifact_embeds_its_figure(tmp_path: Path) -> None:
    png = tmp_path / "seen_unseen.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n fake")
    embedded = embed_figure("# Report\n\n![seen/unseen](seen_unseen.png)\n", "seen_unseen.png", png)
    uri = re.search(r"!\[seen/unseen\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", embedded)
    assert uri and base64.b64decode(uri.group(1)) == png.read_bytes()
    assert "](seen_unseen.png)" not in embedded


def test_run_summary_shows_table_1_routing_and_outputs() -> None:
    metrics = {"dataset": "default", "seed": 0, "modalities": ["audio", "video"], "classes": {"all": ["a", "b"]},
               "methods": {"CSCF": {"A_s": 90.0, "B_s": 80.0, "A_u": 10.0, "B_u": None, "A_s+B_u": 50.0,
                                    "A_u+B_s": 60.0, "A_all+B_all": 55.0, "acc_mix": 58.0, "audio_s": 90.0}},
               "diagnostics": {"dmss_routing_accuracy": 81.25}}
    lines = run_summary(metrics, {"metrics.json": "out/metrics.json", "model": "out/model"}).splitlines()
    assert lines[1].split() == list(TABLE1)
    assert lines[2].split() == ["90.00", "80.00", "10.00", "-", "50.00", "60.00", "55.00", "58.00"]
    assert lines[3] == "DMSS routing accuracy: 81.25 %"
    assert lines[4] == "outputs: out/metrics.json, out/model"


def test_precision_table_gives_mean_std_and_the_difference() -> None:
    """benchmarks.precision's summary line per figure: values 90, 92, 94 have mean 92 and
    sample standard deviation 2; 91, 92, 96 mean 93 (std sqrt(7) = 2.65): +1.00."""
    from benchmarks import precision

    figures = {"fp32": {"A_all+B_all": [90.0, 92.0, 94.0], "acc_mix": [68.0, 68.0, 68.0]},
               "fast": {"A_all+B_all": [91.0, 92.0, 96.0], "acc_mix": [68.5, 68.5, 68.5]}}
    assert precision.table(figures).splitlines() == [
        "A_all+B_all: fp32 92.00 ± 2.00 (90.00, 92.00, 94.00); fast 93.00 ± 2.65 (91.00, 92.00, 96.00); fast - fp32 +1.00",
        "acc_mix: fp32 68.00 ± 0.00 (68.00, 68.00, 68.00); fast 68.50 ± 0.00 (68.50, 68.50, 68.50); fast - fp32 +0.50",
    ]
