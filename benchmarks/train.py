"""Training throughput: the project trainer against bare PyTorch loops.

All train the shipped "CSCF" config (built by `create_model`) with Adam on eq. 10
(`model.loss`), from the same initial weights, on the same synthetic MMHCL data and in
the same batches. The bare loop does the trainer's arithmetic (`trainer.batch_loss`,
same dropout masks, so the same losses: the tests check it) on batches made before the
clock starts; the trainer gathers them every step, and that, its bookkeeping and its
per-epoch state snapshot are what `train_ratio` prices. A third run adds the stage's
real cost of resumability, a `torch.save` of the state after every epoch.

`train_speedup_vs_fp32_bare` compares the trainer with the fp32 loop of before issue 22
(`train_bare(..., reference=True)`): the K mappers one after another, every modality on
every row of a batch, fp32, Adam's per-tensor loop. `train_flop_fraction` is the
trainer's matmul FLOP rate (3x the forward's matmul FLOPs per sample, as counted by
PyTorch's FlopCounterMode) over this machine's 2048 x 2048 matmul rate in the trainer's
precision, measured in the same run and thread setting; `train_executed_flop_fraction`
counts the backward as it runs (no input gradient for the layers reading the features).

    python -m benchmarks --only train [--full]
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from cscf_model import CSCF, TrainConfig, TrainData, create_model, train
from cscf_model.trainer import batch_loss, epoch_indices, make_optimizer, resolve_precision, step_batch


@dataclass(frozen=True)
class Size:
    classes: int
    dims: tuple[int, int]  # modality A, modality B
    samples: int  # training samples, half seen through each modality
    epochs: int
    repeats: int  # each timing is the best of this many


SIZES = {
    "tiny": Size(classes=6, dims=(24, 16), samples=96, epochs=2, repeats=1),
    "default": Size(classes=32, dims=(512, 384), samples=2560, epochs=2, repeats=3),
    "full": Size(classes=32, dims=(512, 384), samples=10240, epochs=5, repeats=3),
}
SEMANTIC_DIM = 384  # the MiniLM class embeddings the pipeline uses


@dataclass
class Problem:
    """Synthetic MMHCL training data: modality A saw the first half of the classes, B the rest."""

    data: TrainData
    class_emb: torch.Tensor
    seen: torch.Tensor

    def model(self, seed: int) -> CSCF:
        torch.manual_seed(seed)
        return create_model("CSCF", [x.shape[1] for x in self.data.features], self.class_emb, self.seen)


def make_problem(size: Size, seed: int = 0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    half, per_modality = size.classes // 2, size.samples // 2
    features, labels = [], []
    for m, dim in enumerate(size.dims):
        centres = torch.randn(size.classes, dim, generator=g)
        y = m * half + torch.arange(per_modality) % half
        features.append(centres[y] + 0.5 * torch.randn(per_modality, dim, generator=g))
        labels.append(y)
    seen = torch.zeros(2, size.classes, dtype=torch.bool)
    seen[0, :half], seen[1, half:] = True, True
    return Problem(TrainData(features, labels), torch.randn(size.classes, SEMANTIC_DIM, generator=g), seen)


def train_project(problem: Problem, cfg: TrainConfig, checkpoint_dir: Path | None = None) -> tuple[float, list[float]]:
    """Seconds and per-epoch losses of `cscf_model.train`, saving each epoch's state when asked."""
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    if checkpoint_dir is not None:
        on_epoch_end = lambda state: torch.save(state, checkpoint_dir / f"epoch-{state['epoch']:04d}.pt")  # noqa: E731
    model = problem.model(cfg.seed)
    began = time.perf_counter()
    _, losses = train(model, problem.data, cfg, on_epoch_end=on_epoch_end)
    return time.perf_counter() - began, losses


def _batches(problem: Problem, cfg: TrainConfig) -> list[list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]]:
    """Every epoch's (features, labels, present) batches, as the trainer's per-epoch seeding draws them."""
    data, epochs = problem.data, []
    for epoch in range(cfg.epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        epochs.append([step_batch(data, list(idx), torch.device("cpu"))
                       for idx in zip(*epoch_indices(data, cfg.batch_size, generator))])
    return epochs


def train_bare(problem: Problem, cfg: TrainConfig, reference: bool = False) -> tuple[float, list[float]]:
    """Seconds and per-epoch losses of a plain loop over the trainer's own batches.

    The batches and the dropout seeds follow the trainer's per-epoch seeding; the step is
    the trainer's `batch_loss`, or with `reference` the fp32 step of before issue 22.
    """
    epochs = _batches(problem, cfg)
    model = problem.model(cfg.seed)
    began = time.perf_counter()
    model.fit_input_stats(problem.data.features)
    optimizer = (reference_optimizer if reference else make_optimizer)(model, cfg)
    step = reference_loss if reference else batch_loss
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    model.train()
    losses = []
    for epoch, batches in enumerate(epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        total = torch.zeros(())
        for feats, labels, present in batches:
            loss = step(model, feats, labels, present, precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        losses.append(total.item() / len(batches))
    return time.perf_counter() - began, losses


def reference_optimizer(model: CSCF, cfg: TrainConfig) -> torch.optim.Adam:
    """`trainer.make_optimizer` before issue 22 (Adam's per-tensor loop); it also sets the
    model's mappers to run one after another, as they did."""
    for bank in model.mappers:
        bank.batched = False
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def reference_loss(
    model: CSCF, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, precision: str
) -> torch.Tensor:
    """`trainer.batch_loss` before issue 22: every modality's mappers on every row of the
    batch, fp32 whatever `precision` says."""
    return model.loss(model(feats, present), labels, present)


def flops_per_sample(problem: Problem, cfg: TrainConfig) -> tuple[float, float]:
    """Matmul FLOPs per sample of one training step in the trainer's precision, on the first
    batch: 3x the forward's (the usual count, backward = 2x forward), and those PyTorch runs
    (fewer: no input gradient for the layers that read the features)."""
    feats, labels, present = _batches(problem, replace(cfg, epochs=1))[0][0]
    model, precision = problem.model(cfg.seed).train(), resolve_precision(cfg.precision, torch.device("cpu"))
    with FlopCounterMode(display=False) as forward:
        loss = batch_loss(model, feats, labels, present, precision)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    run = forward.get_total_flops() + backward.get_total_flops()
    return 3 * forward.get_total_flops() / len(labels), run / len(labels)


def matmul_flop_rate(precision: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in `precision` on this machine's current threads, best of `repeats`."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # first-call costs off the clock
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best


def run(full: bool = False, tiny: bool = False) -> dict[str, float]:
    """Samples per second of the trainer, of the bare loops and of the trainer with
    checkpoints; the trainer's FLOP rate against this machine's matmul rate.

    The four are timed in turn, `repeats` times, and each keeps its best time, so that
    load from other processes on the machine distorts the ratios as little as possible.
    All run with one intra-op thread: with two on two shared cores, OpenMP barriers
    stall and an epoch took 10x longer (measured at load average 6.5).
    """
    with one_thread():
        return _measure(SIZES["tiny" if tiny else "full" if full else "default"])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _measure(size: Size) -> dict[str, float]:
    problem = make_problem(size)
    cfg = TrainConfig(epochs=size.epochs, device="cpu")
    precision = resolve_precision(cfg.precision, torch.device("cpu"))
    train_project(problem, replace(cfg, epochs=1))  # first-call costs (allocator, kernels) off the clock
    best = {"trainer": float("inf"), "bare": float("inf"), "checkpoint": float("inf"), "reference": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(size.repeats):
            best["trainer"] = min(best["trainer"], train_project(problem, cfg)[0])
            best["bare"] = min(best["bare"], train_bare(problem, cfg)[0])
            best["checkpoint"] = min(best["checkpoint"], train_project(problem, cfg, Path(tmp))[0])
            best["reference"] = min(best["reference"], train_bare(problem, cfg, reference=True)[0])
        checkpoint_mb = max(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    samples = size.samples * size.epochs
    counted, executed = (f * samples / best["trainer"] for f in flops_per_sample(problem, cfg))
    peak = matmul_flop_rate(precision)
    return {
        "train_samples_per_s": samples / best["trainer"],
        "train_bare_samples_per_s": samples / best["bare"],
        "train_ratio": best["bare"] / best["trainer"],
        "train_checkpoint_samples_per_s": samples / best["checkpoint"],
        "checkpoint_overhead_ratio": best["checkpoint"] / best["trainer"],
        "checkpoint_mb": checkpoint_mb,
        "train_fp32_bare_samples_per_s": samples / best["reference"],
        "train_speedup_vs_fp32_bare": best["reference"] / best["trainer"],
        "train_precision_bits": 16.0 if precision == "bf16" else 32.0,
        "train_gflop_per_s": counted / 1e9,
        "matmul_gflop_per_s": peak / 1e9,
        "train_flop_fraction": counted / peak,
        "train_executed_flop_fraction": executed / peak,
    }
