"""Figures of the paper's analysis, from a trained CSCF: Figure 4 (top-k sweep), Figure 7 (u per modality)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cscf_model import CSCF  # noqa: E402

from tasks.store import catalog  # noqa: E402
from tasks.evaluation.scoring import cscf_scorer, encode_test, evaluate_method  # noqa: E402
from tasks.training.mmhcl_data import MMHCLData  # noqa: E402

PAPER_SWEEP = ("A_s+B_u", "A_u+B_s", "A_all+B_all")


def sweep_subsets(scores: dict[str, float | None], n_modalities: int) -> list[str]:
    """The multimodal subsets Figure 4 shows: the paper's three, or `all` and `all[...]`."""
    if n_modalities == 2:
        return list(PAPER_SWEEP)
    return [k for k in scores if k == "all" or k.startswith("all[")]


def topk_sweep(model: CSCF, data: MMHCLData, ks: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """Figure 4: CSMF accuracy as top-k grows, with similarity weights and with uniform ones.

    "w/o class similarity" keeps the same top-k classes but weighs them equally, so the
    two curves differ only in whether S's values are used.
    """
    original = model.config
    sweep: dict[str, dict[int, dict[str, float]]] = {"w/ class similarity": {}, "w/o class similarity": {}}
    encoded = encode_test(model, data)  # top-k changes only the fusion
    try:
        for label, weights in (("w/ class similarity", "similarity"), ("w/o class similarity", "uniform")):
            for k in ks:
                model.config = original.replace(top_k=k, csmf_weights=weights)
                scores, _, _ = evaluate_method(cscf_scorer(model, encoded, "csmf", "dmss"), data)
                sweep[label][k] = {s: scores[s] for s in sweep_subsets(scores, len(data.modalities))}
    finally:
        model.config = original
    return sweep


def plot_topk_sweep(sweep: dict[str, dict[int, dict[str, float]]], path: Path) -> Path:
    names = list(next(iter(next(iter(sweep.values())).values())))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), sharex=True, squeeze=False)
    axes = axes[0]
    for ax, subset in zip(axes, names):
        for label, by_k in sweep.items():
            ks = sorted(by_k)
            ax.plot(ks, [by_k[k][subset] for k in ks], marker="o", label=label)
        ax.set_title(subset)
        ax.set_xlabel("top-k")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 4: CSMF top-k sweep")
    return catalog.write_figure(fig, path)


@torch.no_grad()
def uncertainty_samples(model: CSCF, data: MMHCLData, n: int = 30, seed: int = 0) -> dict[str, torch.Tensor]:
    """Figure 7: u of every modality on n random test samples (all modalities shown) of
    the classes each modality saw."""
    test, out = data.test, {}
    g = torch.Generator().manual_seed(seed)
    for m, modality in enumerate(data.modalities):
        rows = (test.available.all(1) & test.seen_by[:, m]).nonzero().squeeze(1)
        rows = rows[torch.randperm(len(rows), generator=g)[:n]]
        res = model([x[rows] for x in test.features], torch.ones(len(rows), len(data.modalities), dtype=torch.bool),
                    fusion="csmf", router="dmss")
        out[f"{modality}'s seen classes"] = res.u  # (M, n)
    return out


def plot_uncertainty(u: dict[str, torch.Tensor], modalities: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(u), figsize=(5 * len(u), 3.2), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (name, values) in zip(axes, u.items()):
        for m, modality in enumerate(modalities):
            ax.plot(values[m].numpy(), marker=".", label=f"u of {modality} ({chr(ord('A') + m)})")
        ax.set_title(f"test samples of {name}")
        ax.set_xlabel("sample")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("DMSS uncertainty u")
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 7: per-sample uncertainty of each modality")
    return catalog.write_figure(fig, path)
