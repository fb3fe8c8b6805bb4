"""The `cscf-predict` flow: a saved model classifies new samples (CONTRACTS section 5).

One task per input Parquet file, on threads or Dask (`task_runner`, as extraction);
several files' outputs are then joined into the one output file, batch by batch. A
media manifest is first extracted with the encoders recorded in the model. The summary
(accuracy per combination of modalities when labels are given) goes to the log, to a
JSON file beside the output and to a markdown artifact; the output is also recorded
under `<workspace>/predict/` for `cscf query` (view `predicted`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, model_validator

from tasks.serving.outputs import concatenate, record_output, resolved_model, summary_lines, write_summary
from tasks.serving.predict import BATCH_ROWS, TOP_K, Tally, check_predict_input, input_files, predict_file
from tasks.store import catalog
from tasks.store.model_file import TrainedModel, load_model

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
        """Fail before any work (`cscf predict` calls this before Prefect starts, so a bad
        input is one line, once) on a missing input, an unusable model, a manifest the model
        cannot read, or features the model cannot read (check_predict_input: Parquet footers,
        modalities, vector lengths)."""
        for what, path in (("features", self.features), ("manifest", self.manifest), ("classes", self.classes)):
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: {what} file not found")
        trained = load_model(Path(self.model))
        if self.manifest and not trained.meta.get("extraction"):
            raise ValueError(f"{self.model}: this model was trained on features that did not come from media; "
                             "--manifest needs a model trained with `cscf run --manifest`")
        if self.features:
            check_predict_input(trained, Path(self.features))
        return trained


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
    out.parent.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in input_files(Path(params.features) if params.features else _extracted(params, trained))]
    if len(sources) == 1:
        tally = predict_file_task(params.model, params.classes, params.workspace, sources[0], str(out),
                                  params.top_k, params.batch_rows)
    else:
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.parts-", dir=out.parent) as parts:
            outs = [str(Path(parts) / f"part-{i:05d}.parquet") for i in range(len(sources))]
            tallies = predict_files.with_options(task_runner=task_runner(params))(params, sources, outs)
            tally = Tally()
            for t in tallies:
                tally.merge(t)
            concatenate([Path(p) for p in outs], out, params.batch_rows)
    summary = write_summary(params.model, params.features or params.manifest, out, trained, tally)
    recorded = record_output(params.model_dump(), out, Path(params.workspace))
    for line in summary_lines(summary):
        logger.info(line)
    create_markdown_artifact("\n".join(["# cscf predict", "", *(f"- {line}" for line in summary_lines(summary))]),
                             key=SUMMARY_ARTIFACT, description=f"cscf predict: {out}")
    return {"output": str(out), "summary": str(out.with_suffix(".summary.json")), "recorded": str(recorded),
            "samples": tally.samples, "accuracy": summary["accuracy"]}


def _extracted(params: PredictParams, trained: TrainedModel) -> Path:
    """Extract the manifest's media with exactly the extraction settings recorded in the model."""
    from tasks import stages

    manifest = params.manifest
    assert manifest is not None
    inputs = {"manifest": manifest, "media_root": params.media_root or str(Path(manifest).parent),
              "settings": trained.meta["extraction"]}
    key = stages.extract_task.fn(workspace=params.workspace, **inputs)
    return stages.extraction_dir(params.workspace, key)
