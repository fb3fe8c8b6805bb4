"""The pipeline's stages as Prefect tasks: thin wrappers around the plain functions.

Each task takes the workspace, its parameters and the *keys* of upstream stages, and
returns its own key. Caching is `StageCachePolicy`: the same key as the files on
disk, so a stage run alone and the full pipeline share one cache.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.store import caching
from tasks.store.caching import Stage, StageCachePolicy
from tasks.semantics.descriptions import build_descriptions
from tasks.semantics.embeddings import build_class_embeddings
from tasks.evaluation.evaluate import SEEN_UNSEEN_PNG, build_evaluation
from tasks.ingest.features import build_features
from tasks.training.split import build_split
from tasks.ingest.extract import (
    ExtractSettings, all_shards_present, build_extraction, build_extraction_shard, extraction_dir, read_manifest,
    shard_count, shard_path,
)
from tasks.evaluation.baselines import build_baseline
from tasks.training.train import build_training
from tasks.training.validation import build_validation
from tasks.store import catalog


def extraction_plan(workspace: str, manifest: str, media_root: str, settings: dict[str, Any]) -> tuple[str, list[int]]:
    """The extraction stage's key and the shards still to extract: none when the stage is complete
    (the stage is then one cache hit), else the shards whose file is missing."""
    params = {"workspace": workspace, "manifest": manifest, "media_root": media_root, "settings": settings}
    key = EXTRACT.key(params)
    if EXTRACT.is_built(workspace, key):
        return key, []
    folder = extraction_dir(workspace, key)
    count = shard_count(len(read_manifest(Path(manifest))), ExtractSettings.from_flat(settings).shard_size)
    return key, [i for i in range(count) if not shard_path(folder, i).exists()]


EXTRACT = Stage("extract", build_extraction, ("/_complete.json",), files=("manifest",),
                code=("tasks.ingest.media", "tasks.encoders.media_encoders"), complete=all_shards_present)
FEATURES = Stage("features", build_features, (".parquet", ".rejected.parquet"), files=("features", "classes", "published"),
                 code=("tasks.ingest.default_dataset", "tasks.ingest.published_features"))
DESCRIPTIONS = Stage("descriptions", build_descriptions, files=("classes",), code=("tasks.semantics.descriptions", "tasks.semantics.llm_client"))
CLASS_EMBEDDINGS = Stage("class_embeddings", build_class_embeddings, code=("tasks.encoders.text_encoders",))
SPLIT = Stage("split", build_split, (".classes.parquet", ".seen.csv", ".samples.parquet"), files=("classes", "seen_file"))
TRAIN = Stage("train", build_training, (".pt",), code=("cscf_model", "tasks.training.mmhcl_data"))
VALIDATE = Stage("validate", build_validation, (".pt",), files=("validation",),
                 code=("cscf_model", "tasks.ingest.features"))
EVALUATE = Stage("evaluate", build_evaluation, (".metrics.json", ".predictions.parquet", ".report.md", ".seen_unseen.png"),
                 code=("cscf_model", "tasks.training.mmhcl_data", "tasks.evaluation.scoring", "tasks.evaluation.report", "tasks.evaluation.seen_unseen",
                       "tasks.store.provenance"),
                 optional=("validation_key",))
BASELINE = Stage("baselines", build_baseline, (".metrics.json", ".predictions.parquet"),
                 code=("cscf_model.baselines", "cscf_model.trainer", "cscf_model.calibration", "cscf_model.config",
                       "cscf_model.metrics", "tasks.training.mmhcl_data", "tasks.evaluation.scoring", "tasks.encoders.text_encoders"))
STAGES = {s.name: s for s in (EXTRACT, FEATURES, DESCRIPTIONS, CLASS_EMBEDDINGS, SPLIT, TRAIN, VALIDATE, EVALUATE,
                              BASELINE)}


def _options(stage: Stage) -> dict[str, Any]:
    return {"name": stage.name, "cache_policy": StageCachePolicy(stage=stage), "persist_result": True}


@task(**_options(EXTRACT))
def extract_task(workspace: str, manifest: str, media_root: str, settings: dict[str, Any]) -> str:
    return EXTRACT.run(locals())


@task(name="extract_shard", cache_policy=NO_CACHE, task_run_name="extract_shard-{shard}")
def extract_shard_task(
    workspace: str, key: str, manifest: str, media_root: str, settings: dict[str, Any], shard: int
) -> str:
    """No Prefect cache: the shard file is the cache, and the extract stage's key covers the inputs."""
    return str(build_extraction_shard(Path(workspace), key, manifest, media_root, settings, shard))


@task(**_options(FEATURES))
def features_task(
    workspace: str,
    features: str | None,
    classes: str,
    default_seed: int,
    extracted: str | None,
    published: str | None,
    published_layout: str,
) -> str:
    return FEATURES.run(locals())


@task(**_options(DESCRIPTIONS), retries=1)
def descriptions_task(workspace: str, classes: str, settings: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    return DESCRIPTIONS.run(locals())


@task(**_options(CLASS_EMBEDDINGS))
def class_embeddings_task(workspace: str, descriptions_key: str, encoder: str) -> str:
    return CLASS_EMBEDDINGS.run(locals())


@task(**_options(SPLIT))
def split_task(
    workspace: str, features_key: str, classes: str, modalities: list[str] | None, seed: int, seen: str, overlap: float,
    seen_file: str | None,
) -> str:
    return SPLIT.run(locals())


@task(**_options(TRAIN))
def train_task(
    workspace: str,
    features_key: str,
    split_key: str,
    embeddings_key: str,
    method: str,
    model_overrides: dict[str, Any],
    train_config: dict[str, Any],
) -> str:
    return TRAIN.run(locals())


@task(**_options(VALIDATE))
def validate_task(workspace: str, validation: str, train_key: str) -> str:
    """The key covers the validation file's content and the trained model's key."""
    return VALIDATE.run(locals())


REPORT_ARTIFACT = "cscf-report"
ACCURACY_ARTIFACT = "cscf-accuracy"


@task(**_options(EVALUATE))
def evaluate_task(
    workspace: str, features_key: str, split_key: str, embeddings_key: str, trained: dict[str, str], dataset: str,
    seed: int, validation_key: str | None = None,
) -> str:
    key = EVALUATE.run(locals())
    _publish_artifacts(Path(workspace), key)
    return key


def _publish_artifacts(workspace: Path, key: str) -> None:
    """Show the report (Tables 1 and 2) and CSCF's accuracies in the Prefect UI.

    Only a fresh evaluation publishes: a cache hit does not run this body, and the UI
    already holds the artifacts of the run that computed that key.
    """
    metrics = json.loads(catalog.stage_output(workspace, "evaluate", key, ".metrics.json").read_text())
    run = f"{metrics['dataset']}, seed {metrics['seed']}, evaluation {key}"
    report = catalog.stage_output(workspace, "evaluate", key, ".report.md").read_text()
    figure = catalog.stage_output(workspace, "evaluate", key, ".seen_unseen.png")
    create_markdown_artifact(embed_figure(report, SEEN_UNSEEN_PNG, figure), key=REPORT_ARTIFACT,
                             description=f"CSCF report: {run}")
    rows = [{"subset": subset, "accuracy": round(acc, 2)} for subset, acc in metrics["methods"]["CSCF"].items()
            if acc is not None]
    create_table_artifact(rows, key=ACCURACY_ARTIFACT, description=f"CSCF top-1 accuracy (%) per subset: {run}")


def embed_figure(markdown: str, name: str, png: Path) -> str:
    """`markdown` with its image link to `name` replaced by the PNG's bytes as a data URI:
    the Prefect UI cannot reach a file next to report.md, so a plain link is a broken image."""
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return markdown.replace(f"]({name})", f"]({uri})")


@task(**_options(BASELINE))
def baseline_task(
    workspace: str, features_key: str, split_key: str, embeddings_key: str, method: str, train_config: dict[str, Any]
) -> str:
    return BASELINE.run(locals())


def results_dir(workspace: str | Path) -> Path:
    """Where Prefect keeps its result records for this workspace."""
    return Path(workspace) / caching.RESULTS_DIR
