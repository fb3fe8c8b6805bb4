"""report.md from metrics: Table 1 and Table 2 of the paper, as GitHub markdown tables.

With two disjoint modalities the tables have the paper's columns (A_s ... acc_mix);
otherwise one column per modality seen/unseen, `all`, and `all` split by which
modalities saw the true class (cscf_model/metrics.py names them).
"""

from __future__ import annotations

from typing import Any

PAPER_TABLE1 = ("A_s", "B_s", "A_u", "B_u", "A_s+B_u", "A_u+B_s", "A_all+B_all", "acc_mix")
PAPER_TABLE2 = ("A_s+B_u", "A_u+B_s", "A_all+B_all")
# Table 2: (method key, row label). D = the paper's DMSS, R = the learned router, C = CSMF.
ABLATION = (("B+O", "B+O"), ("B+O+D", "B+O+D"), ("B+O+D+C", "B+O+D+C (the paper's CSCF)"),
            ("B+O+R+C", "B+O+R+C"), ("CSCF", "B+O+R (CSCF)"))
CEILING = "routing ceiling"
GZSL = ("S", "U", "H")  # the AV-GZSL protocol's figures, when every modality saw the same classes


def paper_protocol(metrics: dict[str, Any]) -> bool:
    """Two modalities and every class seen by exactly one of them: the paper's Table 1 applies."""
    seen = metrics["classes"]["seen"]
    if len(seen) != 2:
        return False
    a, b = (set(v) for v in seen.values())
    return not a & b and len(a | b) == len(metrics["classes"]["all"])


def table_columns(metrics: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(Table 1 columns, Table 2 columns) for this run's modalities and seen sets."""
    if paper_protocol(metrics):
        return list(PAPER_TABLE1), list(PAPER_TABLE2)
    modalities, keys = metrics["modalities"], list(metrics["methods"]["CSCF"])
    multimodal = ["all", *(k for k in keys if k.startswith(("all[", "given[")))]
    return [*(f"{m}_s" for m in modalities), *(f"{m}_u" for m in modalities), *multimodal, "acc_mix"], multimodal


def modalities_line(metrics: dict[str, Any]) -> str:
    """`audio` (A, 16 seen classes), `video` (B, 16 seen classes), ..."""
    seen = metrics["classes"]["seen"]
    return ", ".join(f"`{m}` ({chr(ord('A') + i)}, {len(seen[m])} seen classes)" for i, m in enumerate(metrics["modalities"]))


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
    diagnostics = metrics.get("diagnostics", {})
    table1, table2 = table_columns(metrics)
    rows = [[name, *(_fmt(s.get(k)) for k in table1)] for name, s in methods.items()]
    if "routing_ceiling" in diagnostics:
        rows.append([CEILING, *(_fmt(diagnostics["routing_ceiling"].get(k)) for k in table1)])
    t1 = markdown_table(["Method", *table1], rows)
    t2 = markdown_table(
        ["Model", *table2],
        [[label, *(_fmt(methods[key].get(k)) for k in table2)] for key, label in ABLATION if key in methods],
    )
    sizes = diagnostics.get("subset_sizes", {})
    counts = markdown_table(["Subset", *table1[:-1]], [["test samples", *(str(sizes.get(k, "n/a")) for k in table1[:-1])]])
    diag = "\n".join(f"- {k}: {_fmt(v) if isinstance(v, float) else v}" for k, v in diagnostics.items()
                     if not isinstance(v, dict))
    legend = ("A_u: A alone on B_s classes; B_u: B alone on A_s classes; A_s+B_u / A_u+B_s: both modalities on "
              "A_s / B_s classes; acc_mix: mean of the first six columns." if paper_protocol(metrics) else
              "`<m>_s` / `<m>_u`: modality m alone on samples of the classes it saw / did not see; `all`: every modality "
              "shown; `all[x+y]`: the same on samples whose class was seen by exactly x and y; `given[x+y]`: samples that "
              "have only those modalities; acc_mix: mean of every `_s`, `_u` and `all[...]` column.")
    return f"""# CSCF report: {metrics['dataset']} (seed {metrics['seed']})

Modalities: {modalities_line(metrics)}.
Top-1 accuracy in percent over all classes, test split. {legend}
`{CEILING}`: every multimodal sample decided by the modalities that saw its true class (perfect routing).

## Table 1: methods

{t1}

{counts}

## Table 2: ablation (B = baseline, O = OSRS, D = DMSS, R = learned router, C = CSMF)

{t2}
{render_gzsl(methods)}{render_reference(metrics)}{render_routing(diagnostics)}
## Diagnostics

{diag}
{render_calibration(methods.get("CSCF", {}), diagnostics, table1)}{render_validation(diagnostics)}\
{render_provenance(metrics)}"""


SEEN_UNSEEN = (("margin", "margin"), ("seen_acc", "seen"), ("unseen_acc", "unseen"), ("harmonic_mean", "H"),
               ("seen_acc_uncalibrated", "seen (margin 0)"), ("unseen_acc_uncalibrated", "unseen (margin 0)"),
               ("harmonic_mean_uncalibrated", "H (margin 0)"), ("ausuc", "AUSUC"),
               ("cosine_rule_unseen_acc", "cosine rule, unseen"))


def render_provenance(metrics: dict[str, Any]) -> str:
    """What produced these numbers: code version, text encoder, description settings."""
    p = metrics.get("provenance")
    if not p:
        return ""
    code = p["code"]
    return f"""
## Provenance

- code: cscf {code['package']}, git {code['git'] or 'n/a'}, source sha256 {code['source_sha256'][:16]}
- class semantics: text encoder `{p['text_encoder']}`; descriptions {p['descriptions']}
"""


def render_gzsl(methods: dict[str, dict[str, float | None]]) -> str:
    """S, U and H of every method that has them (every modality saw the same classes)."""
    rows = [[name, *(_fmt(s.get(k)) for k in GZSL)] for name, s in methods.items() if "S" in s]
    if not rows:
        return ""
    return f"""
## Generalized zero-shot (AV-GZSL protocol: every modality saw the same classes)

Test samples showing every modality, all of them shown. S / U: top-1 accuracy (%, over all
classes) on the samples of seen / unseen classes; H: their harmonic mean 2SU / (S + U).

{markdown_table(["Method", *GZSL], rows)}
"""


def router_name(diagnostics: dict[str, Any]) -> str:
    """Who routes for CSCF: its learned router unless the diagnostics say DMSS."""
    return "DMSS" if diagnostics.get("cscf_router") == "dmss" else "learned router"


def render_routing(diagnostics: dict[str, Any]) -> str:
    """Per seen pattern: how often CSCF's router picks a modality that saw the true class,
    CSCF's accuracy and the routing ceiling there."""
    by_pattern = diagnostics.get("routing_by_pattern")
    if not by_pattern:
        return ""
    rows = [[k, str(d["samples"]), _fmt(d["routing"]), _fmt(d["accuracy"]), _fmt(d["ceiling"])]
            for k, d in by_pattern.items()]
    header = ["Seen pattern", "test samples", f"routing ({router_name(diagnostics)})", "CSCF accuracy", CEILING]
    return f"""
## Routing per seen pattern (every modality shown)

`all[x+y]`: test samples showing every modality whose class was seen by exactly x and y.
Routing: percent of them whose dominant modality is one that saw the true class (n/a for
`all[none]`: no modality saw it). Overall: {_fmt(diagnostics.get("router_routing_accuracy"))} %
({router_name(diagnostics)}), {_fmt(diagnostics.get("dmss_routing_accuracy"))} % (DMSS, B+O+D).

{markdown_table(header, rows)}
"""


def render_reference(metrics: dict[str, Any]) -> str:
    """On samples that show every modality: each modality alone, averaging, CSCF and the ceiling."""
    d = metrics.get("diagnostics", {})
    if "modality_alone" not in d:
        return ""
    methods = metrics["methods"]
    rows = [*([f"`{m}` alone", _fmt(v)] for m, v in d["modality_alone"].items()),
            ["averaging (B+O)", _fmt(methods.get("B+O", {}).get("all"))], ["CSCF", _fmt(methods["CSCF"].get("all"))],
            [CEILING, _fmt(d["routing_ceiling"].get("all"))]]
    return f"""
## Fusion against its references (`all`: every modality shown)

{markdown_table(["Decided by", "all"], rows)}
"""


def render_calibration(cscf: dict[str, float], diagnostics: dict[str, Any], columns: list[str]) -> str:
    """Table 1 with and without calibrated stacking, and each modality's seen/unseen trade-off."""
    if "seen_unseen" not in diagnostics:
        return ""
    t1 = markdown_table(["CSCF", *columns], [["calibrated", *(_fmt(cscf.get(k)) for k in columns)],
                                             ["margin 0", *(_fmt(diagnostics["CSCF_uncalibrated"].get(k)) for k in columns)]])
    su = markdown_table(["Modality", *(label for _, label in SEEN_UNSEEN)],
                        [[m, *(_fmt(d[k]) for k, _ in SEEN_UNSEEN)] for m, d in diagnostics["seen_unseen"].items()])
    points = markdown_table(["Modality", "rule", "margin", "seen", "unseen"],
                            [[m, rule, *(_fmt(p[k]) for k in ("margin", "seen_acc", "unseen_acc"))]
                             for m, d in diagnostics["seen_unseen"].items()
                             for rule, p in d.get("operating_points", {}).items()])
    return f"""
## Unseen classes: calibration

Calibrated stacking subtracts each modality's margin (chosen on training data only) from
the logits of the classes it saw. Seen / unseen: that modality alone on test samples of
its seen / unseen classes (`<m>_s` and `<m>_u`); H: their harmonic mean; AUSUC: area under
the seen/unseen curve as the margin moves (percent); cosine rule: the training-free
argmax of cos(features, class semantics), where the features share the text space.

{t1}

{su}

The margin each calibration rule chose on training data (`cscf run --calibration`): the
harmonic mean for text-aligned modalities, the mean within 3 points of seen accuracy for
the others ("harmonic", the default), or that mean for every modality ("seen-budget").

{points}

![seen/unseen accuracy per modality](seen_unseen.png)
"""


FUSIONS = {"gate": "B+O+R (router fusion)", "csmf": "B+O+R+C (router + CSMF)"}


def fusion_name(fusion: str, top_k: int | None, gate_mix: str | None = None) -> str:
    """A fusion candidate as the report and the run summary name it."""
    name = FUSIONS.get(fusion, fusion)
    if fusion == "csmf" and top_k is not None:
        return f"{name}, top-k {top_k}"
    return f"{name}, gate mix {gate_mix}" if fusion == "gate" and gate_mix else name


def render_validation(diagnostics: dict[str, Any]) -> str:
    """The choices made on `--validation` data (tasks.training.validation.validation_record):
    every fusion candidate's accuracy, and each modality's margin before and after."""
    record = diagnostics.get("validation_choices")
    if not record:
        return ""
    chosen, candidates = record["chosen"], record["candidates"]
    picked = lambda c: (c["fusion"] == chosen["fusion"] and c["top_k"] in (None, chosen["top_k"])  # noqa: E731
                        and c.get("gate_mix") in (None, chosen.get("gate_mix")))
    fusions = markdown_table(["Fusion", "top-k", "gate mix", "accuracy", ""], [
        [FUSIONS.get(c["fusion"], c["fusion"]), "-" if c["top_k"] is None else str(c["top_k"]),
         c.get("gate_mix") or "-", _fmt(c["accuracy"]), "chosen" if picked(c) else ""] for c in candidates["fusion"]])
    pair = lambda acc: "n/a" if acc is None else f"{acc[0]:.2f} / {acc[1]:.2f}"  # noqa: E731
    margins = markdown_table(
        ["Modality", "margin (training data)", "margin used", "from", "seen / unseen samples",
         "seen / unseen acc. at training margin", "at margin used"],
        [[m, f"{s['trained']:.4g}", f"{s['chosen']:.4g}", "validation" if s["from_validation"] else "training data",
          f"{s['seen_samples']} / {s['unseen_samples']}", pair(s["at_trained"]), pair(s["at_chosen"])]
         for m, s in candidates["margins"].items()])
    rejected = ", ".join(f"{n} {why}" for why, n in record["rejected_rows"].items()) or "none"
    return f"""
## Choices made on validation data

`--validation` (sha256 {record['file_sha256'][:16]}, {record['samples']} samples; rows set aside: {rejected})
chose these settings instead of the defaults; CSCF and the ablations on its weights use them.
{_gate_scaling_text(candidates.get("gate_scaling"))}
Fusion: {fusion_name(chosen['fusion'], chosen['top_k'], chosen.get('gate_mix'))}, by top-1 accuracy (%) on the
{candidates['multimodal_samples']} validation samples showing two or more modalities (a tie keeps the model as trained):

{fusions}

Calibration margins: each modality alone on the validation samples that show it, by the
model's own criterion; the margin from training data stays without samples of both seen and
unseen classes, or on a tie. Accuracies in percent.

{margins}
"""


def _gate_scaling_text(record: dict[str, Any] | None) -> str:
    """The gate scaling part of render_validation (nothing for records from before it)."""
    if not record:
        return ""
    table = markdown_table(["Modality", "slope", "shift", "seen / unseen samples"], [
        [m, f"{g['slope']:.3g}", f"{g['shift']:.3g}", f"{g['seen_samples']} / {g['unseen_samples']}"]
        for m, g in record["per_modality"].items()])
    verdict = "scaled as below" if record["adopted"] else "kept as trained (the scaling below was fitted, not adopted)"
    return f"""
Router gates: {verdict}. Each gate's logit Platt-scaled on the samples showing its modality
(logit -> slope * logit + shift; 1 and 0 without samples of both seen and unseen classes),
adopted only when it raised the fusion's accuracy on the samples showing several modalities,
fitted on one half of them and scored on the other, both ways: {_fmt(record['accuracy_as_trained'])} as trained,
{_fmt(record['accuracy_scaled'])} scaled.

{table}
"""


def validation_line(diagnostics: dict[str, Any]) -> list[str]:
    """The run summary's line on the choices made on `--validation` data (none without it)."""
    chosen = (diagnostics.get("validation_choices") or {}).get("chosen")
    if not chosen:
        return []
    margins = ", ".join(f"{m} {t:.4g}" for m, t in chosen["margins"].items())
    fusion = fusion_name(chosen["fusion"], chosen["top_k"], chosen.get("gate_mix"))
    gates = "gates rescaled; " if chosen.get("gate_scaling") else ""
    return [f"chosen on validation data: {gates}{fusion}; margins {margins}"]


def overlapping(metrics: dict[str, Any]) -> bool:
    """More than two modalities, or two seen sets that share a class."""
    seen = [set(v) for v in metrics["classes"].get("seen", {}).values()]
    return len(metrics["modalities"]) > 2 or any(a & b for i, a in enumerate(seen) for b in seen[i + 1:])


def run_summary(metrics: dict[str, Any], outputs: dict[str, str]) -> str:
    """What a user looks at after `cscf run`: CSCF's Table 1 row (and S, U, H under the
    AV-GZSL protocol), the routing accuracy of CSCF's own router (the learned one; DMSS for
    metrics written before it was recorded), one line per seen pattern when there are more
    than two modalities or overlapping seen sets, the settings chosen on `--validation` data,
    and where the outputs are. Two modalities give the paper's columns; more give every subset."""
    scores = metrics["methods"]["CSCF"]
    names = ([k for k in (*PAPER_TABLE1, *GZSL) if k in scores] if len(metrics["modalities"]) == 2
             else list(scores))
    cells = ["-" if scores[k] is None else f"{scores[k]:.2f}" for k in names]
    widths = [max(len(a), len(b)) for a, b in zip(names, cells)]
    diagnostics = metrics.get("diagnostics") or {}
    if "router_routing_accuracy" in diagnostics:
        label, routing = f"CSCF routing accuracy ({router_name(diagnostics)})", diagnostics["router_routing_accuracy"]
    else:
        label, routing = "DMSS routing accuracy", diagnostics.get("dmss_routing_accuracy")
    pct = lambda x: "-" if x is None else f"{x:.2f} %"  # noqa: E731
    patterns = [f"  {k}: routing {pct(d['routing'])}, accuracy {pct(d['accuracy'])}, ceiling {pct(d['ceiling'])}"
                f" ({d['samples']} samples)"
                for k, d in diagnostics.get("routing_by_pattern", {}).items()] if overlapping(metrics) else []
    lines = [f"CSCF on {metrics['dataset']} (seed {metrics['seed']}), top-1 % over all {len(metrics['classes']['all'])} classes"
             if "all" in metrics["classes"] else f"CSCF on {metrics['dataset']} (seed {metrics['seed']}), top-1 %",
             "  ".join(n.rjust(w) for n, w in zip(names, widths)),
             "  ".join(c.rjust(w) for c, w in zip(cells, widths)),
             f"{label}: {pct(routing)}", *patterns, *validation_line(diagnostics),
             "outputs: " + ", ".join(str(p) for p in outputs.values())]
    return "\n".join(lines)
