"""What a `cscf predict` run leaves behind besides predictions: the model it used (over the
requested classes), the joined output of several input files, a copy for `cscf query`,
and the summary lines a person reads."""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.serving.open_vocab import model_over_classes
from tasks.serving.predict import Tally, open_parquet, record_batches
from tasks.store import catalog
from tasks.store.model_file import META, TrainedModel, load_model


def resolved_model(model: str, classes: str | None, workspace: str) -> TrainedModel:
    """The model over the requested classes, once per process and model file version
    (the tasks of one run share it)."""
    stamp = tuple(p.stat().st_mtime_ns for p in (Path(model) / META, Path(classes or model)))
    return _resolved_model(model, classes, workspace, stamp)


@lru_cache(maxsize=4)
def _resolved_model(model: str, classes: str | None, workspace: str, stamp: tuple[int, ...]) -> TrainedModel:
    return model_over_classes(load_model(Path(model)), Path(classes) if classes else None, Path(workspace))


def concatenate(parts: list[Path], out: Path, batch_rows: int) -> None:
    """Join the per-file outputs into one file, a record batch at a time."""
    with catalog.batch_writer(out, catalog.PREDICTED) as write:
        for part in parts:
            for batch in record_batches(open_parquet(part), batch_rows, catalog.PREDICTED.names):
                write(pa.Table.from_batches([batch]))


def record_output(run: dict[str, Any], out: Path, workspace: Path) -> Path:
    """A copy of the output under `<workspace>/predict/<key>.parquet`, for `cscf query`;
    the key hashes the run's parameters."""
    key = hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:20]
    target = catalog.stage_output(workspace, "predict", key)
    with catalog.atomic_path(target) as tmp:
        shutil.copyfile(out, tmp)
    return target


def write_summary(model: str, source: str | None, out: Path, trained: TrainedModel, tally: Tally) -> dict[str, Any]:
    """The run's summary (CONTRACTS section 5), written beside the output as `.summary.json`."""
    summary = {"model": model, "input": source, "output": str(out), "classes": len(trained.class_names),
               "added_classes": trained.meta.get("added_classes", []), **tally.summary()}
    catalog.write_json(summary, out.with_suffix(".summary.json"))
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The run's summary as the lines the log and the Prefect artifact show."""
    lines = [f"{summary['samples']} samples predicted over {summary['classes']} classes "
             f"({len(summary['added_classes'])} added by name) -> {summary['output']}"]
    for combo, acc in summary["accuracy_by_modalities"].items():
        lines.append(f"accuracy with {combo}: {acc['accuracy']:.2f}% of {acc['samples']} labelled samples")
    if summary["accuracy"] is not None:
        lines.append(f"accuracy overall: {summary['accuracy']:.2f}% of {summary['labelled']} labelled samples")
    for reason, r in summary["rejected_rows"].items():
        lines.append(f"{r['rows']} row(s) set aside: {reason} (e.g. sample_id {r['examples']})")
    return lines
