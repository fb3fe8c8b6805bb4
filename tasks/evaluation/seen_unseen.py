"""The seen/unseen trade-off of each modality on the test split (issue 6's diagnostics).

For modality m alone, its seen-class test samples (`<m>_s`) and its unseen-class ones
(`<m>_u`) are scored from the model's raw logits while calibrated stacking's margin
sweeps; the curve, its area (AUSUC) and the harmonic mean at the trained model's margin
go into metrics.json's `diagnostics`, the curve into the report as a figure. The
training-free cosine rule is reported next to it where the modality shares the
class-semantic space: it is what unseen-class accuracy could be without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cscf_model import CSCF, Encoded  # noqa: E402
from cscf_model.calibration import SeenUnseenCurve, cosine_rule_accuracy, harmonic_mean  # noqa: E402

from tasks.store import catalog  # noqa: E402
from tasks.training.mmhcl_data import MMHCLData  # noqa: E402


@torch.no_grad()
def seen_unseen_curves(encoded: Encoded, data: MMHCLData) -> dict[str, SeenUnseenCurve]:
    """Per modality name: its seen/unseen curve on the unimodal test subsets, from the
    model's raw logits of every test sample (tasks.evaluation.scoring.encode_test)."""
    test, curves = data.test, {}
    for m, modality in enumerate(data.modalities):
        curves[modality] = SeenUnseenCurve.from_logits(encoded.raw[m], test.labels, data.seen[m], test.available[:, m])
    return curves


def _harmonic(seen: float, unseen: float) -> float:
    return float(harmonic_mean(torch.tensor(seen, dtype=torch.float64), torch.tensor(unseen, dtype=torch.float64)))


def seen_unseen_diagnostics(
    model: CSCF, data: MMHCLData, curves: dict[str, SeenUnseenCurve], margins_by_rule: dict[str, list[float]]
) -> dict[str, Any]:
    """`diagnostics` entries per modality: AUSUC, harmonic mean and accuracies with and
    without the model's margin, the cosine rule's unseen-class accuracy, and
    `operating_points`: the margin, seen and unseen accuracy under every calibration rule
    training chose a margin by (`margins_by_rule`, rule -> one margin per modality)."""
    out: dict[str, Any] = {}
    test = data.test
    for m, (modality, curve) in enumerate(curves.items()):
        margin = float(model.margin[m])
        seen_acc, unseen_acc = curve.at(margin)
        raw_seen, raw_unseen = curve.at(0.0)
        rows = test.available[:, m] & ~test.seen_by[:, m]
        out[modality] = {
            "ausuc": curve.ausuc(),
            "margin": margin,
            "seen_acc": seen_acc,
            "unseen_acc": unseen_acc,
            "harmonic_mean": _harmonic(seen_acc, unseen_acc),
            "seen_acc_uncalibrated": raw_seen,
            "unseen_acc_uncalibrated": raw_unseen,
            "harmonic_mean_uncalibrated": _harmonic(raw_seen, raw_unseen),
            "cosine_rule_unseen_acc": cosine_rule_accuracy(test.features[m][rows], test.labels[rows], data.class_emb),
            "operating_points": {rule: dict(zip(("margin", "seen_acc", "unseen_acc"), (at[m], *curve.at(at[m]))))
                                 for rule, at in margins_by_rule.items()},
        }
    return out


def plot_seen_unseen(curves: dict[str, SeenUnseenCurve], diagnostics: dict[str, Any], path: Path) -> Path:
    """One panel per modality: seen vs unseen accuracy, with the uncalibrated and chosen points."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    for ax, (modality, curve) in zip(axes[0], curves.items()):
        d = diagnostics[modality]
        ax.plot(curve.unseen_acc.numpy(), curve.seen_acc.numpy(), label=f"AUSUC {d['ausuc']:.1f}")
        ax.scatter([d["unseen_acc_uncalibrated"]], [d["seen_acc_uncalibrated"]], marker="x", color="k",
                   label="margin 0 (uncalibrated)", zorder=3)
        for i, (rule, point) in enumerate(d["operating_points"].items()):
            ax.scatter([point["unseen_acc"]], [point["seen_acc"]], marker="s^v"[i % 3], facecolors="none",
                       edgecolors=f"C{i + 1}", s=60, label=f"{rule} margin {point['margin']:.2f}", zorder=3)
        ax.scatter([d["unseen_acc"]], [d["seen_acc"]], marker="o", color="C3",
                   label=f"chosen margin {d['margin']:.2f}", zorder=4)
        ax.set_title(f"{modality}")
        ax.set_xlabel("unseen-class accuracy (%)")
        ax.set_ylabel("seen-class accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Seen/unseen accuracy of each modality as the calibration margin moves")
    return catalog.write_figure(fig, path)
