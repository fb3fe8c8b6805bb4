"""Training loop for CSCF (Algorithm 1), resumable epoch by epoch, with no file IO.

The caller gets the full training state after every epoch through `on_epoch_end` and
decides where to save it; passing that state back as `resume` continues from the next
epoch. Every epoch reseeds the shuffling and dropout RNGs from (seed, epoch), so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator

import torch

from .cscf import CSCF
from .data import TrainData


@dataclass(frozen=True)
class TrainConfig:
    """Defaults from appendix D."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    # "bf16": the mappers under bf16 autocast; weights, Adam's state, the cosine head and
    # the loss stay fp32. "auto" picks it where bf16 matmuls are native (resolve_precision).
    # Checkpoints record the resolved value in train_config["precision"].
    precision: str = "auto"  # "auto" | "fp32" | "bf16"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r} is not one of ('auto', 'fp32', 'bf16')")


def stage_seed(seed: int, stage: str) -> int:
    """A seed for one stage's random draws, derived from the run's seed and the stage's name.

    Seeding each stage from this, never from the global RNG state left by earlier work,
    keeps a stage's draws the same whether that earlier work ran or was skipped on resume.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{stage}".encode()).digest()[:4], "little")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """"auto" -> "bf16" where bf16 matmuls run natively, else "fp32".

    Native: CUDA GPUs with bf16 units (Ampere on), CPUs with AVX-512 BF16 or AMX (as read
    by PyTorch's CPU capability checks, not timed: a timing probe on a loaded machine could
    answer differently run to run). Elsewhere bf16 is emulated and slower than fp32. On the
    2-core AVX-512 BF16 development machine a 2048 x 2048 matmul on one core runs at 207
    GFLOP/s in bf16 against 95 in fp32.
    """
    if name != "auto":
        return name
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    elif device.type == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        native = False
    return "bf16" if native else "fp32"


def epoch_indices(
    data: TrainData, batch_size: int, generator: torch.Generator
) -> list[list[torch.Tensor]]:
    """Index batches per modality; the shorter modalities cycle so each step sees all."""
    sizes = [len(y) for y in data.labels]
    steps = max(math.ceil(n / batch_size) for n in sizes if n > 0)
    out = []
    for n in sizes:
        if n == 0:
            out.append([torch.empty(0, dtype=torch.long)] * steps)
            continue
        reps = math.ceil(steps * batch_size / n)
        order = torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])
        out.append([order[s * batch_size : (s + 1) * batch_size] for s in range(steps)])
    return out


def step_batch(
    data: TrainData, idx: list[torch.Tensor], device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Stack one batch of every modality into a presence-masked block.

    Rows of modality m carry zeros for the other modalities and present[:, m] = True.
    """
    n_total = sum(len(i) for i in idx)
    feats, present, labels, row = [], torch.zeros(n_total, len(idx), dtype=torch.bool), [], 0
    for m, i in enumerate(idx):
        present[row : row + len(i), m] = True
        labels.append(data.labels[m][i])
        row += len(i)
    for m, x in enumerate(data.features):
        block = torch.zeros(n_total, x.shape[1])
        start = sum(len(i) for i in idx[:m])
        block[start : start + len(idx[m])] = x[idx[m]]
        feats.append(block.to(device))
    return feats, torch.cat(labels).to(device), present.to(device)


def epoch_batches(
    data: TrainData, cfg: TrainConfig, epoch: int, device: torch.device
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """The (features, labels, present) batches of one epoch, reseeding the RNGs from (seed, epoch).

    Seeding per epoch (shuffling and dropout alike) is what makes a resumed run equal an
    uninterrupted one; the baselines train through the same batches.
    """
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    for idx in zip(*epoch_indices(data, cfg.batch_size, generator)):
        yield step_batch(data, list(idx), device)


def make_optimizer(model: CSCF, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the trainable parameters, as one fused kernel (fp32 state, the same update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def batch_loss(
    model: CSCF, feats: list[torch.Tensor], labels: torch.Tensor, present: torch.Tensor, precision: str
) -> torch.Tensor:
    """Eq. 10 on one batch: each modality's mappers on its own rows (CSCF.encode), under
    bf16 autocast when `precision` is "bf16"; fusion and loss in fp32."""
    with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        enc = model.encode(feats, gates=model.config.router == "gate", present=present)
    return model.loss(model.fuse(enc, present), labels, present)


def checkpoint_state(
    model: CSCF, optimizer: torch.optim.Optimizer, epoch: int, train_cfg: TrainConfig, losses: list[float]
) -> dict[str, Any]:
    """Everything needed to resume training or rebuild the model for evaluation.

    A snapshot: tensors are copied, so a state kept in memory does not follow training.
    """
    return {
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "config": model.config.to_dict(),
        "input_dims": model.input_dims,
        "train_config": asdict(train_cfg),
        "losses": list(losses),
    }


def train(
    model: CSCF,
    data: TrainData,
    cfg: TrainConfig,
    resume: dict[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[CSCF, list[float]]:
    """Train with Adam on eq. 10; returns the model (on CPU, eval mode) and per-epoch mean losses."""
    device = resolve_device(cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    model.fit_input_stats(data.features)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    start, losses = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start, losses = resume["epoch"] + 1, list(resume["losses"])
    for epoch in range(start, cfg.epochs):
        model.train()
        total, steps = 0.0, 0
        for feats, labels, present in epoch_batches(data, cfg, epoch, device):
            loss = batch_loss(model, feats, labels, present, cfg.precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
        if log:
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {losses[-1]:.4f}")
        if on_epoch_end:
            on_epoch_end(checkpoint_state(model, optimizer, epoch, cfg, losses))
    model.to("cpu").eval()
    return model, losses
