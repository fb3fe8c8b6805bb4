"""`cscf` command line (CONTRACTS section 2): runs the flow in-process, no server needed;
`cscf query` runs SQL over the cached stage outputs (tasks/store/query.py)."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError

from flows.runtime import EXIT_CODES, interruptible, prefect_api, prefect_env


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscf", description="CSCF multimodal classification under heterogeneous category sets")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline on one dataset")
    _pipeline_args(run, out="out")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--validation", metavar="FILE", help="labelled long-form Parquet file: the fusion, CSMF top-k and "
                     "calibration margins are chosen on it instead of defaults (recorded in the model and the report)")
    bench = sub.add_parser("benchmark", help="CSCF, its ablations and every baseline over several seeds")
    _pipeline_args(bench, out="benchmark")
    bench.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    bench.add_argument("--methods", help="comma-separated baselines (default: all seven)")
    query = sub.add_parser("query", help="run SQL over the cached stage outputs (views: features, predictions, metrics, ...)")
    query.add_argument("sql", help="a DuckDB query, e.g. \"select * from metrics where method = 'CSCF'\"")
    query.add_argument("--workspace", help="folder of cached stage outputs (default: ./cscf-workspace)")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _predict_args(sub.add_parser("predict", help="classify new samples with DIR/model from `cscf run --out DIR`"))
    return p


def _predict_args(p: argparse.ArgumentParser) -> None:
    """`cscf predict` (CONTRACTS section 5)."""
    p.add_argument("--model", required=True, help="model folder written by `cscf run --out DIR` (DIR/model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="Parquet file or folder in long form (class_name and split optional)")
    source.add_argument("--manifest", help="media manifest, extracted with the encoders recorded in the model")
    p.add_argument("--media-root", help="folder the manifest's paths are relative to (default: the manifest's folder)")
    p.add_argument("--classes", help="classes.csv to predict over (default: the model's); new names are added by name")
    p.add_argument("--out", required=True, help="output .parquet file (a .summary.json is written beside it)")
    p.add_argument("--workspace", help="cache of added classes' vectors and of extractions (default: ./cscf-workspace)")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per sample (default 5)")
    p.add_argument("--task-runner", choices=("threads", "dask"), default="threads", help="what runs one task per input file")
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster (default: a local one on 127.0.0.1)")


def _pipeline_args(p: argparse.ArgumentParser, out: str) -> None:
    """Data and training options shared by `run` and `benchmark`."""
    p.add_argument("--features", help="Parquet file or folder of features (default: the embedded dataset)")
    p.add_argument("--manifest", help="media manifest (sample_id, class_name, path[, split]) to extract CLIP/CLAP features from")
    p.add_argument("--media-root", help="folder the manifest's paths are relative to (default: the manifest's folder)")
    p.add_argument("--clip-checkpoint", help="open_clip pretrained tag or checkpoint file for video features")
    p.add_argument("--clap-checkpoint", help="laion-clap checkpoint file for audio features")
    p.add_argument("--published", help="root of a published feature set (ClipClap-GZSL or AVCA-GZSL layout)")
    p.add_argument("--classes", help="classes.csv (required with --features, --manifest or --published)")
    p.add_argument("--modalities", help="A,B[,C...]: two or more modalities (default: the first two sorted)")
    p.add_argument("--seen", help="auto (default), halves, data, or a CSV file (modality, class_name): which classes each modality saw")
    p.add_argument("--overlap", type=float, help="with --seen halves: fraction of the classes seen by every modality")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    p.add_argument("--workspace", help="folder of cached stage outputs (default: ./cscf-workspace)")
    p.add_argument("--llm", choices=("auto", "llm", "offline"), default="auto", help="description writer")
    p.add_argument("--template", help="prompt template file for the LLM")
    p.add_argument("--offline-template", help="the offline description writer's phrasings: a file, one per line, with {class_name}")
    p.add_argument("--epochs", type=int, help="training epochs (default 50)")
    p.add_argument("--top-k", type=int, help="CSMF top-k (default 3)")
    p.add_argument("--gate-mix", choices=("product", "prior"),
                   help="how the learned router fuses modalities: product of their distributions (default), or the "
                        "pattern posterior on their mean logits (better on two modalities with disjoint class lists)")
    p.add_argument("--calibration", choices=("harmonic", "seen-budget"),
                   help="calibration margins by the harmonic mean of seen and unseen accuracy (default), or by "
                        "their mean at most 3 points of seen accuracy below no margin")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="training arithmetic and storage: auto (bf16 where the device runs it natively, the default), "
                        "fp32 or bf16")
    p.add_argument("--refresh", action="append", default=[], metavar="STAGE", help="recompute this stage even if cached (repeatable)")
    p.add_argument("--task-runner", choices=("threads", "dask"), help="what runs the extraction shards (default: threads)")
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster (default: a local one on 127.0.0.1)")


def _query(sql: str, workspace: str, fmt: str) -> int:
    """Print the result of `sql` over the workspace's views (no Prefect involved)."""
    import duckdb

    from tasks.store.query import connect, views

    con = None
    try:
        con = connect(Path(workspace))
        rel = con.sql(sql)
    except (duckdb.Error, FileNotFoundError) as e:
        unknown_view = con is not None and isinstance(e, duckdb.CatalogException)
        hint = f" (views in {workspace}: {', '.join(views(con)) or 'none'})" if unknown_view else ""
        print(f"cscf: error: {str(e).splitlines()[0]}{hint}", file=sys.stderr)
        return 1
    if rel is None:  # a statement without a result
        return 0
    if fmt == "table":
        rel.show(max_rows=10_000, max_width=10_000)
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(rel.columns)
        writer.writerows(rel.fetchall())
    else:
        print(json.dumps([dict(zip(rel.columns, row)) for row in rel.fetchall()], default=str))
    return 0


def pipeline_params(args: argparse.Namespace):  # -> PipelineParams, imported late (Prefect env first)
    from flows.params import ExtractParams, LLMParams, PipelineParams

    extract = {k: v for k, v in (("clip_pretrained", args.clip_checkpoint), ("clap_checkpoint", args.clap_checkpoint)) if v}
    llm = {"mode": args.llm} | ({"template": args.template} if args.template else {})
    llm |= {"offline_template": args.offline_template} if args.offline_template else {}
    fields = {
        "features": args.features,
        "classes": args.classes,
        "manifest": args.manifest,
        "media_root": args.media_root,
        "published": args.published,
        "extract": ExtractParams(**extract),
        "modalities": args.modalities.split(",") if args.modalities else None,
        "seen": args.seen,
        "overlap": args.overlap,
        "seed": getattr(args, "seed", 0),
        "validation": getattr(args, "validation", None),
        "out": args.out,
        "workspace": args.workspace,
        "epochs": args.epochs,
        "top_k": args.top_k,
        "calibration": args.calibration,
        "gate_mix": args.gate_mix,
        "device": args.device,
        "precision": args.precision,
        "refresh": args.refresh,
        "llm": LLMParams(**llm),
        "task_runner": args.task_runner,
        "dask_address": args.dask_address,
    }
    return PipelineParams(**{k: v for k, v in fields.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tasks.store.catalog import DEFAULT_WORKSPACE

    args.workspace = args.workspace or str(DEFAULT_WORKSPACE)
    if args.command == "query":
        return _query(args.sql, args.workspace, args.format)
    prefect_env(args.workspace)
    _configure_logging()
    from prefect.exceptions import TerminationSignal

    with interruptible():
        try:
            return _predict(args) if args.command == "predict" else _run(args)
        except USER_ERRORS as e:
            return _error_line(e)
        except (KeyboardInterrupt, TerminationSignal) as e:
            return _interrupted_line(args.command, e)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "sentence_transformers", "prefect.server", "uvicorn", "docket", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet = _NoUserErrorTraceback()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)


def _run(args: argparse.Namespace) -> int:
    """`cscf run` and `cscf benchmark`: inputs checked before Prefect starts, then the flow."""
    params = pipeline_params(args)
    params.check_inputs()
    _check_user_files(params)
    with prefect_api():
        if args.command == "benchmark":
            return _benchmark(args, params)
        from flows.pipeline import cscf

        result = cscf(params)
    for name, path in result["outputs"].items():
        print(f"wrote {path}")
    print("stages: " + ", ".join(f"{k}={v}" for k, v in result["states"].items()))
    if "metrics.json" in result["outputs"]:
        from tasks.evaluation.report import run_summary

        print(run_summary(json.loads(Path(result["outputs"]["metrics.json"]).read_text()), result["outputs"]))
    return 0


def _interrupted_line(command: str, e: BaseException) -> int:
    """The one line of an interrupted command (what was running, what is saved) and its exit code."""
    from tasks.store.progress import STATUS

    signum = getattr(e, "signum", None) or getattr(e, "signal", None) or signal.SIGINT
    where = STATUS.stage or command
    saved = STATUS.saved or ("no output written" if command == "predict" else "finished stages are cached")
    print(f"cscf: interrupted during {where}; {saved}; rerun the same command to resume", file=sys.stderr)
    return EXIT_CODES.get(signal.Signals(signum), 128 + int(signum))


# What `main` reports as one `cscf: error:` line: bad inputs, settings and files the
# message names (pydantic's ValidationError is a ValueError).
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def _error_line(e: Exception) -> int:
    """Print an expected error as the one line `cscf: error: ...` and return the exit code 1."""
    message = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
    print(f"cscf: error: {message.splitlines()[0]}", file=sys.stderr)
    return 1


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed flow or task with its traceback; for a bad input (one the error
    names) the one-line `cscf: error:` is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info = None
        return True


def _check_user_files(params) -> None:  # params: PipelineParams
    """The checks that cost little, done before Prefect starts: classes.csv, the features'
    and the validation file's Parquet footers, the prompt template (when an LLM writes the
    descriptions)."""
    from tasks.semantics.descriptions import load_template
    from tasks.ingest.features import check_features_file
    from tasks.training.validation import check_validation_file

    from tasks.store.inputs import read_classes

    read_classes(params.classes_path())
    if params.features:
        check_features_file(params.features)
    if params.validation:
        check_validation_file(params.validation)
    if params.llm.mode == "llm" or (params.llm.mode == "auto" and os.environ.get("OPENAI_API_KEY")):
        load_template(Path(params.llm.template))


def _predict(args: argparse.Namespace) -> int:
    """Run the `cscf-predict` flow in-process; a bad input is one line and leaves no output."""
    from flows.predict import PredictParams, cscf_predict

    fields = {k: getattr(args, k) for k in ("model", "features", "manifest", "media_root", "classes", "out",
                                            "workspace", "top_k", "task_runner", "dask_address")}
    params = PredictParams(**{k: v for k, v in fields.items() if v is not None})
    params.check_inputs()
    with prefect_api():
        result = cscf_predict(params)
    print(f"wrote {result['output']} ({result['samples']} samples) and {result['summary']}")
    return 0


def _benchmark(args: argparse.Namespace, params) -> int:  # params: PipelineParams
    from cscf_model.baselines import BASELINES
    from flows.benchmark import benchmark

    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",") if args.methods else list(BASELINES)
    command = "cscf " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "cscf benchmark"
    result = benchmark(params.model_copy(update={"out": None}), seeds=seeds, methods=methods, out=args.out, command=command)
    print(f"wrote {result['report']}")
    return 0


def console() -> None:
    """The `cscf` executable: `main`, then the process ends with its exit code. After an
    interrupt it ends at once: worker threads still inside a task (extraction shards, files
    of `cscf predict`) would otherwise hold the exit until they finish; every output they
    write is atomic, and the Prefect server is already stopped."""
    code = main()
    if code in EXIT_CODES.values():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
