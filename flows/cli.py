"""`cscf` command line (CONTRACTS section 2): runs the flow in-process, no server needed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from pydantic import ValidationError


def _prefect_env(workspace: str) -> None:
    """Keep Prefect local and quiet before it is imported: no analytics, state inside the workspace."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "cscf")
    if "PREFECT_API_URL" not in os.environ:
        home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(workspace).resolve() / ".prefect")))
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cscf", description="CSCF multimodal classification under heterogeneous category sets")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline on one dataset")
    run.add_argument("--features", help="Parquet file or folder of features (default: the embedded dataset)")
    run.add_argument("--classes", help="classes.csv (required with --features)")
    run.add_argument("--modalities", help="A,B: the two modalities (default: first two sorted)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="out", help="folder for metrics.json and report.md")
    run.add_argument("--workspace", help="folder of cached stage outputs (default: data/workspace)")
    run.add_argument("--llm", choices=("auto", "llm", "offline"), default="auto", help="description writer")
    run.add_argument("--template", help="prompt template file for the LLM")
    run.add_argument("--epochs", type=int, help="training epochs (default 50)")
    run.add_argument("--top-k", type=int, help="CSMF top-k (default 3)")
    run.add_argument("--device", help="auto, cpu or cuda")
    run.add_argument("--refresh", action="append", default=[], metavar="STAGE", help="recompute this stage even if cached (repeatable)")
    return p


def _params(args: argparse.Namespace):  # -> PipelineParams, imported late (Prefect env first)
    from flows.params import LLMParams, PipelineParams

    llm = {"mode": args.llm} | ({"template": args.template} if args.template else {})
    fields = {
        "features": args.features,
        "classes": args.classes,
        "modalities": args.modalities.split(",") if args.modalities else None,
        "seed": args.seed,
        "out": args.out,
        "workspace": args.workspace,
        "epochs": args.epochs,
        "top_k": args.top_k,
        "device": args.device,
        "refresh": args.refresh,
        "llm": LLMParams(**llm),
    }
    return PipelineParams(**{k: v for k, v in fields.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from tasks.catalog import DEFAULT_WORKSPACE

    args.workspace = args.workspace or str(DEFAULT_WORKSPACE)
    _prefect_env(args.workspace)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "sentence_transformers", "prefect.server", "uvicorn", "docket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params = _params(args)
        params.check_inputs()
        from flows.pipeline import cscf

        result = cscf(params)
    except (ValidationError, ValueError, FileNotFoundError, RuntimeError) as e:
        message = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        print(f"cscf: error: {message.splitlines()[0]}", file=sys.stderr)
        return 1
    for name, path in result["outputs"].items():
        print(f"wrote {path}")
    print("stages: " + ", ".join(f"{k}={v}" for k, v in result["states"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
