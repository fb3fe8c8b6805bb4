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
    diag = "\n".join(f"- {k}: {_fmt(v) if isinstance(v, float) else v}" for k, v in metrics.get("diagnostics", {}).items())
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
"""
