"""Training throughput: the project trainer against a bare PyTorch loop doing the same work.

Both train the shipped "CSCF" config (built by `create_model`) with Adam on eq. 10
(`model.loss`), from the same initial weights, on the same synthetic MMHCL data and in
the same batches with the same dropout masks, so they compute the same losses (the
tests check it). The bare loop gets its batches ready-made before the clock starts;
the trainer gathers them every step, and that, its bookkeeping and its per-epoch state
snapshot are what the ratio prices. A third run adds the stage's real cost of
resumability, a `torch.save` of the state after every epoch.

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

from cscf_model import CSCF, TrainConfig, TrainData, create_model, train
from cscf_model.trainer import epoch_indices, step_batch


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


def train_bare(problem: Problem, cfg: TrainConfig) -> tuple[float, list[float]]:
    """Seconds and per-epoch losses of a plain loop over the trainer's own batches.

    The batches and the dropout seeds follow the trainer's per-epoch seeding, so that
    both loops do identical arithmetic.
    """
    data, cpu = problem.data, torch.device("cpu")
    epochs = []
    for epoch in range(cfg.epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        epochs.append([step_batch(data, list(idx), cpu) for idx in zip(*epoch_indices(data, cfg.batch_size, generator))])
    model = problem.model(cfg.seed)
    began = time.perf_counter()
    model.fit_input_stats(data.features)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    model.train()
    losses = []
    for epoch, batches in enumerate(epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        total = torch.zeros(())
        for feats, labels, present in batches:
            loss = model.loss(model(feats, present), labels, present)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        losses.append(total.item() / len(batches))
    return time.perf_counter() - began, losses


def run(full: bool = False, tiny: bool = False) -> dict[str, float]:
    """Samples per second of the trainer, of the bare loop and of the trainer with checkpoints.

    The three are timed in turn, `repeats` times, and each keeps its best time, so that
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
    train_project(problem, replace(cfg, epochs=1))  # first-call costs (allocator, kernels) off the clock
    best = {"trainer": float("inf"), "bare": float("inf"), "checkpoint": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(size.repeats):
            best["trainer"] = min(best["trainer"], train_project(problem, cfg)[0])
            best["bare"] = min(best["bare"], train_bare(problem, cfg)[0])
            best["checkpoint"] = min(best["checkpoint"], train_project(problem, cfg, Path(tmp))[0])
        checkpoint_mb = max(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
    samples = size.samples * size.epochs
    return {
        "train_samples_per_s": samples / best["trainer"],
        "train_bare_samples_per_s": samples / best["bare"],
        "train_ratio": best["bare"] / best["trainer"],
        "train_checkpoint_samples_per_s": samples / best["checkpoint"],
        "checkpoint_overhead_ratio": best["checkpoint"] / best["trainer"],
        "checkpoint_mb": checkpoint_mb,
    }
