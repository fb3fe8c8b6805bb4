"""GPU: the scale benchmark's training on CUDA with bf16 autocast, against a bare loop there.

Needs only PyTorch, NumPy and PyArrow (no Prefect, no text encoder), so it runs on a
machine with a GPU and nothing else of the project installed; the class centres and
class embeddings come from a file written here by `benchmarks.scale_data.save_centres`.
It reports, at the full VGGSound size: the trainer's and a bare loop's samples per
second on the GPU (the same batches, losses and autocast), the time of 50 epochs of
CSCF training, and CSCF's acc_mix (margins 0: no calibration training) after them; and
at a smaller size, CSCF's acc_mix trained on the GPU (three seeds) and on the CPU (two,
as time allows), so that the CPU-GPU difference can be read against seed-to-seed noise.

    python -m benchmarks.gpu CENTRES.npz OUT.json [--epochs 50] [--acc-fraction 0.0625] [--acc-epochs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cscf_model import TrainConfig, TrainData, create_model, train
from cscf_model.trainer import batch_loss, epoch_indices, make_optimizer, resolve_precision, step_batch
from tasks.training.mmhcl_data import MMHCLData, TestSet
from tasks.evaluation.scoring import cscf_predict, evaluate_method, on_test

from .scale_data import ScaleSize, scale_tables


def load_problem(centres_file: Path, fraction: float, seed: int = 0) -> MMHCLData:
    """The scale dataset as tensors under the paper's protocol: disjoint seeded halves of
    the classes, modality A (audio) trained on its half, B (video) on the other."""
    table = pa.concat_tables(scale_tables(ScaleSize(fraction), centres_file, seed))
    saved = np.load(centres_file)
    names = saved["names"].tolist()
    index = {n: i for i, n in enumerate(names)}
    order = np.random.default_rng(seed).permutation(len(names))
    seen = torch.zeros(2, len(names), dtype=torch.bool)
    seen[0, order[: len(names) // 2]], seen[1, order[len(names) // 2 :]] = True, True
    train_x, train_y, test_x = [], [], []
    for m, modality in enumerate(("audio", "video")):
        rows = table.filter(pc.equal(table["modality"], modality))
        x = torch.from_numpy(rows["vector"].combine_chunks().flatten().to_numpy().reshape(len(rows), -1).copy())
        y = torch.tensor([index[c] for c in rows["class_name"].to_pylist()])
        is_train = torch.from_numpy(np.asarray(rows["split"].to_pylist()) == "train")
        keep = is_train & seen[m, y]
        train_x.append(x[keep])
        train_y.append(y[keep])
        test_x.append(x[~is_train])
        test_y = y[~is_train]
        test_ids = np.asarray(rows["sample_id"].to_pylist())[~is_train.numpy()].tolist()
    available = torch.ones(len(test_y), 2, dtype=torch.bool)
    test = TestSet(test_ids, test_y, seen[:, test_y].T, test_x, available)
    class_emb = torch.from_numpy(saved["class_emb"]).float()
    return MMHCLData(names, ["audio", "video"], class_emb, seen, TrainData(train_x, train_y), test)


def _model(data: MMHCLData, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("CSCF", data.input_dims, data.class_emb, data.seen)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_seconds(data: MMHCLData, cfg: TrainConfig) -> tuple[float, torch.nn.Module]:
    model = _model(data, cfg.seed)
    device = torch.device(cfg.device)
    _sync(device)
    began = time.perf_counter()
    model, _ = train(model, data.train, cfg)
    _sync(device)
    return time.perf_counter() - began, model


def bare_seconds(data: MMHCLData, cfg: TrainConfig) -> float:
    """A plain Adam loop over the trainer's own batches, made and moved to the device before
    the clock starts; the trainer's step (`batch_loss`) and precision."""
    device = torch.device(cfg.device)
    epochs = []
    for epoch in range(cfg.epochs):
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        epochs.append([step_batch(data.train, list(idx), device)
                       for idx in zip(*epoch_indices(data.train, cfg.batch_size, generator))])
    model = _model(data, cfg.seed)
    model.fit_input_stats(data.train.features)
    model.to(device).train()
    optimizer, precision = make_optimizer(model, cfg), resolve_precision(cfg.precision, device)
    _sync(device)
    began = time.perf_counter()
    for epoch, batches in enumerate(epochs):
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        for feats, labels, present in batches:
            loss = batch_loss(model, feats, labels, present, precision)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    _sync(device)
    return time.perf_counter() - began


def acc_mix(model: torch.nn.Module, data: MMHCLData) -> float:
    return evaluate_method(on_test(cscf_predict(model.eval(), "csmf"), data), data)[0]["acc_mix"]


def run(centres_file: Path, out: Path, epochs: int, acc_fraction: float, acc_epochs: int,
        deadline_s: float, full_budget_s: float = 150, acc_only: bool = False) -> dict[str, Any]:
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def note(**kv: Any) -> None:
        figures.update(kv)
        print(json.dumps(kv), flush=True)
        out.write_text(json.dumps(figures, indent=2))

    began = time.perf_counter()
    if acc_only:
        _accuracy(centres_file, acc_fraction, acc_epochs, deadline_s, began, note)
        return figures
    full = load_problem(centres_file, 1.0)
    note(full_train_samples=sum(len(y) for y in full.train.labels), full_test_samples=len(full.test.labels),
         load_s=time.perf_counter() - began)
    gpu = TrainConfig(epochs=2, device="cuda", precision="bf16")
    trainer_seconds(full, replace(gpu, epochs=1))  # CUDA context, kernels and allocator off the clock
    trainer_s = min(trainer_seconds(full, gpu)[0] for _ in range(2))
    bare_s = min(bare_seconds(full, gpu) for _ in range(2))
    samples = sum(len(y) for y in full.train.labels) * gpu.epochs
    note(gpu_train_samples_per_s=samples / trainer_s, gpu_bare_samples_per_s=samples / bare_s,
         gpu_train_ratio=bare_s / trainer_s)
    per_epoch = trainer_s / gpu.epochs
    fits = max(1, min(epochs, int(full_budget_s / per_epoch)))  # fewer epochs when 50 would not fit the lease
    seconds, model = trainer_seconds(full, replace(gpu, epochs=fits))
    note(gpu_full_epochs=fits, gpu_full_train_s=seconds, gpu_full_acc_mix=acc_mix(model, full),
         gpu_full_train_s_per_50_epochs=seconds / fits * 50)
    del full, model
    _accuracy(centres_file, acc_fraction, acc_epochs, deadline_s, began, note)
    return figures


def _accuracy(centres_file: Path, acc_fraction: float, acc_epochs: int, deadline_s: float, began: float,
              note: Callable[..., None]) -> None:
    """CSCF's acc_mix at `acc_fraction` of the size, trained on CUDA (seeds 0-2) then the CPU
    (seeds 0-1), each only while `deadline_s` after `began` has not passed."""
    small = load_problem(centres_file, acc_fraction)
    torch.set_num_threads(min(8, torch.get_num_threads()))
    for device, seed in (("cuda", 0), ("cuda", 1), ("cuda", 2), ("cpu", 0), ("cpu", 1)):
        if time.perf_counter() - began > deadline_s:
            note(skipped=f"{device} seed {seed}: past the {deadline_s:.0f} s deadline")
            break
        seconds, model = trainer_seconds(small, TrainConfig(epochs=acc_epochs, device=device, seed=seed))
        note(**{f"{device}_acc_mix_seed{seed}": acc_mix(model, small), f"{device}_train_s_seed{seed}": seconds})
    note(acc_fraction=acc_fraction, acc_epochs=acc_epochs, total_s=time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("centres", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--acc-fraction", type=float, default=1 / 16)
    parser.add_argument("--acc-epochs", type=int, default=20)
    parser.add_argument("--deadline-s", type=float, default=300, help="start no accuracy run after this")
    parser.add_argument("--acc-only", action="store_true", help="only the CPU/GPU accuracy comparison")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu: no CUDA device")
    run(args.centres, args.out, args.epochs, args.acc_fraction, args.acc_epochs, args.deadline_s, acc_only=args.acc_only)


if __name__ == "__main__":
    main()
