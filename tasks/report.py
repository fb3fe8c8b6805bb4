"""report.md from metrics: Table 1 and Table 2 of the paper, as GitHub markdown tables."""

from __future__ import annotations

from typing import Any

TABLE1 = ("A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s", "A_all+B_all", "acc_mix")
TABLE2 = ("A_s+B_u", "A_u+B_s", "A_all+B_all")
ABLATION = (("B+O", "B+O"), ("B+O+D", "B+O+D"), ("CSCF", "B+O+D+C"))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table whose columns line up in a terminal as well as on GitHub."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.2f}"


def render_report(metrics: dict[str, Any]) -> str:
    """Table 1 (every method), Table 2 (ablation) and the diagnostics of one run."""
    methods = metrics["methods"]
    t1 = markdown_table(["Method", *TABLE1], [[name, *(_fmt(s.get(k)) for k in TABLE1)] for name, s in methods.items()])
    t2 = markdown_table(
        ["Model", *TABLE2],
        [[label, *(_fmt(methods[key].get(k)) for k in TABLE2)] for key, label in ABLATION if key in methods],
    )
    a, b = metrics["modalities"]
    diagnostics = metrics.get("diagnostics", {})
    diag = "\n".join(f"- {k}: {_fmt(v) if isinstance(v, float) else v}" for k, v in diagnostics.items()
                     if not isinstance(v, dict))
    return f"""# CSCF report: {metrics['dataset']} (seed {metrics['seed']})

Modality A = `{a}` (seen classes A_s: {len(metrics['classes']['A_seen'])}), modality B = `{b}` (seen classes B_s: {len(metrics['classes']['B_seen'])}).
Top-1 accuracy in percent over all classes, test split. A_u: A alone on B_s classes; B_u: B alone on A_s classes;
A_s+B_u / A_u+B_s: both modalities on A_s / B_s classes; acc_mix: mean of the first six columns.

## Table 1: methods

{t1}

## Table 2: ablation (B = baseline, O = OSRS, D = DMSS, C = CSMF)

{t2}

## Diagnostics

{diag}
{render_calibration(methods.get("CSCF", {}), diagnostics)}"""


SEEN_UNSEEN = (("margin", "margin"), ("seen_acc", "seen"), ("unseen_acc", "unseen"), ("harmonic_mean", "H"),
               ("seen_acc_uncalibrated", "seen (margin 0)"), ("unseen_acc_uncalibrated", "unseen (margin 0)"),
               ("harmonic_mean_uncalibrated", "H (margin 0)"), ("ausuc", "AUSUC"),
               ("cosine_rule_unseen_acc", "cosine rule, unseen"))


def render_calibration(cscf: dict[str, float], diagnostics: dict[str, Any]) -> str:
    """Table 1 with and without calibrated stacking, and each modality's seen/unseen trade-off."""
    if "seen_unseen" not in diagnostics:
        return ""
    t1 = markdown_table(["CSCF", *TABLE1], [["calibrated", *(_fmt(cscf.get(k)) for k in TABLE1)],
                                            ["margin 0", *(_fmt(diagnostics["CSCF_uncalibrated"].get(k)) for k in TABLE1)]])
    su = markdown_table(["Modality", *(label for _, label in SEEN_UNSEEN)],
                        [[m, *(_fmt(d[k]) for k, _ in SEEN_UNSEEN)] for m, d in diagnostics["seen_unseen"].items()])
    return f"""
## Unseen classes: calibration

Calibrated stacking subtracts each modality's margin (chosen on training data only) from
the logits of the classes it saw. Seen / unseen: that modality alone on test samples of
its seen / unseen classes (A_s and A_u for A); H: their harmonic mean; AUSUC: area under
the seen/unseen curve as the margin moves (percent); cosine rule: the training-free
argmax of cos(features, class semantics), where the features share the text space.

{t1}

{su}

![seen/unseen accuracy per modality](seen_unseen.png)
"""
