"""The `cscf-predict` flow: a saved model classifies new samples (CONTRACTS section 5).

One task per input Parquet file, on threads or Dask (`task_runner`, as extraction);
several files' outputs are then joined into the one output file, batch by batch. A
media manifest is first extracted with the encoders recorded in the model. The summary
(accuracy per combination of modalities when labels are given) goes to the log, to a
JSON file beside the output and to a markdown artifact; the output is also recorded
under `<workspace>/predict/` for `cscf query` (view `predicted`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, model_validator

from tasks import catalog
from tasks.model_file import META, TrainedModel, load_model
from tasks.open_vocab import model_over_classes
from tasks.predict import BATCH_ROWS, TOP_K, Tally, input_files, predict_file, record_batches

from .pipeline import task_runner

SUMMARY_ARTIFACT = "cscf-predict-summary"


class PredictParams(BaseModel):
    """Everything a run of `cscf-predict` depends on."""

    model: str = Field(description="model folder written by `cscf run --out DIR` (DIR/model)")
    features: str | None = Field(None, description="Parquet file or folder in long form (class_name, split optional)")
    manifest: str | None = Field(None, description="media manifest, extracted with the encoders recorded in the model")
    media_root: str | None = Field(None, description="folder the manifest's paths are relative to (default: its folder)")
    classes: str | None = Field(None, description="classes.csv to predict over; classes the model never saw are added")
    out: str = Field(description="output Parquet file")
    workspace: str = Field(str(catalog.DEFAULT_WORKSPACE), description="cache of new classes' vectors and extractions")
    top_k: int = Field(TOP_K, ge=1, description="classes listed per sample in top_k")
    batch_rows: int = Field(BATCH_ROWS, ge=1, description="input rows per record batch (bounds memory)")
    task_runner: Literal["threads", "dask"] = Field("threads", description="what runs one task per input file")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster")

    @model_validator(mode="after")
    def _one_input(self) -> PredictParams:
        if bool(self.features) == bool(self.manifest):
            raise ValueError("give exactly one of --features and --manifest")
        if not self.out.endswith(".parquet"):
            raise ValueError(f"--out {self.out}: the output is a .parquet file")
        return self

    def check_inputs(self) -> TrainedModel:
        """Fail before any work on a missing input, an unusable model, or a manifest the model cannot read."""
        for what, path in (("features", self.features), ("manifest", self.manifest), ("classes", self.classes)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: {what} file not found")
        trained = load_model(Path(self.model))
        if self.manifest and not trained.meta.get("extraction"):
            raise ValueError(f"{self.model}: this model was trained on features that did not come from media; "
                             "--manifest needs a model trained with `cscf run --manifest`")
        return trained


def resolved_model(model: str, classes: str | None, workspace: str) -> TrainedModel:
    """The model over the requested classes, once per process and model file version
    (the tasks of one run share it)."""
    stamp = tuple(p.stat().st_mtime_ns for p in (Path(model) / META, Path(classes or model)))
    return _resolved_model(model, classes, workspace, stamp)


@lru_cache(maxsize=4)
def _resolved_model(model: str, classes: str | None, workspace: str, stamp: tuple[int, ...]) -> TrainedModel:
    return model_over_classes(load_model(Path(model)), Path(classes) if classes else None, Path(workspace))


@task(name="predict_file", cache_policy=NO_CACHE, task_run_name="predict-{source}")
def predict_file_task(model: str, classes: str | None, workspace: str, source: str, out: str, top_k: int,
                      batch_rows: int) -> Tally:
    return predict_file(resolved_model(model, classes, workspace), Path(source), Path(out), top_k, batch_rows)


@flow(name="cscf-predict-files", log_prints=False)
def predict_files(params: PredictParams, sources: list[str], outs: list[str]) -> list[Tally]:
    """One task per input file, on this flow's task runner."""
    return predict_file_task.map(model=params.model, classes=params.classes, workspace=params.workspace,
                                 source=sources, out=outs, top_k=params.top_k, batch_rows=params.batch_rows).result()


@flow(name="cscf-predict", log_prints=False)
def cscf_predict(params: PredictParams) -> dict[str, Any]:
    """Classify every sample of params.features (or params.manifest) with the model of params.model."""
    logger = get_run_logger()
    params.check_inputs()
    trained = resolved_model(params.model, params.classes, params.workspace)
    out = Path(params.out)
    sources = [str(p) for p in input_files(Path(params.features) if params.features else _extracted(params, trained))]
    if len(sources) == 1:
        tally = predict_file_task(params.model, params.classes, params.workspace, sources[0], str(out),
                                  params.top_k, params.batch_rows)
    else:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.parts-", dir=_parent(out)) as parts:
            outs = [str(Path(parts) / f"part-{i:05d}.parquet") for i in range(len(sources))]
            tallies = predict_files.with_options(task_runner=task_runner(params))(params, sources, outs)
            tally = Tally()
            for t in tallies:
                tally.merge(t)
            _concatenate([Path(p) for p in outs], out, params.batch_rows)
    summary = {"model": params.model, "input": params.features or params.manifest, "output": str(out),
               "classes": len(trained.class_names), "added_classes": trained.meta.get("added_classes", []),
               **tally.summary()}
    catalog.write_json(summary, out.with_suffix(".summary.json"))
    recorded = _record(params, out)
    for line in _summary_lines(summary):
        logger.info(line)
    create_markdown_artifact("\n".join(["# cscf predict", "", *(f"- {line}" for line in _summary_lines(summary))]),
                             key=SUMMARY_ARTIFACT, description=f"cscf predict: {out}")
    return {"output": str(out), "summary": str(out.with_suffix(".summary.json")), "recorded": str(recorded),
            "samples": tally.samples, "accuracy": summary["accuracy"]}


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"{summary['samples']} samples predicted over {summary['classes']} classes "
             f"({len(summary['added_classes'])} added by name) -> {summary['output']}"]
    for combo, acc in summary["accuracy_by_modalities"].items():
        lines.append(f"accuracy with {combo}: {acc['accuracy']:.2f}% of {acc['samples']} labelled samples")
    if summary["accuracy"] is not None:
        lines.append(f"accuracy overall: {summary['accuracy']:.2f}% of {summary['labelled']} labelled samples")
    for reason, r in summary["rejected_rows"].items():
        lines.append(f"{r['rows']} row(s) set aside: {reason} (e.g. sample_id {r['examples']})")
    return lines


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _concatenate(parts: list[Path], out: Path, batch_rows: int) -> None:
    """Join the per-file outputs into one file, a record batch at a time."""
    with catalog.batch_writer(out, catalog.PREDICTED) as write:
        for part in parts:
            for batch in record_batches(pq.ParquetFile(part), batch_rows, catalog.PREDICTED.names):
                write(pa.Table.from_batches([batch]))


def _record(params: PredictParams, out: Path) -> Path:
    """A copy of the output under `<workspace>/predict/<key>.parquet`, for `cscf query`."""
    key = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()[:20]
    target = catalog.stage_output(Path(params.workspace), "predict", key)
    with catalog.atomic_path(target) as tmp:
        shutil.copyfile(out, tmp)
    return target


def _extracted(params: PredictParams, trained: TrainedModel) -> Path:
    """Extract the manifest's media with exactly the extraction settings recorded in the model."""
    from tasks import stages

    manifest = params.manifest
    assert manifest is not None
    inputs = {"manifest": manifest, "media_root": params.media_root or str(Path(manifest).parent),
              "settings": trained.meta["extraction"]}
    key = stages.extract_task.fn(workspace=params.workspace, **inputs)
    return stages.extraction_dir(params.workspace, key)
