"""The `cscf` flow: descriptions -> class embeddings, features -> split -> training -> evaluation.

It only wires stages (tasks/stages.py); every stage is cached by its content key, so a
rerun with unchanged inputs recomputes nothing, and a changed input recomputes only
the stages downstream of it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from cscf_model import TrainConfig
from tasks import stages
from tasks.descriptions import DescriptionSettings
from tasks.evaluate import publish

from .params import PipelineParams


def _call(task: Any, params: PipelineParams, runs: dict[str, dict[str, str]], **kwargs: Any) -> str:
    """Run one stage with this workspace's result storage; record its key and final state."""
    name = task.name
    configured = task.with_options(
        result_storage=stages.results_dir(params.workspace), refresh_cache=name in params.refresh
    )
    state: State = configured(workspace=params.workspace, **kwargs, return_state=True)
    label = f"{name}[{kwargs['method']}]" if "method" in kwargs else name
    key = state.result()
    runs[label] = {"state": state.name, "key": key}
    return key


@flow(name="cscf", log_prints=False)
def cscf(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """Run every stage of CSCF on one dataset and write metrics.json and report.md."""
    logger = get_run_logger()
    classes = params.classes_path()
    settings = DescriptionSettings(**{**params.llm.model_dump(), "template": Path(params.llm.template),
                                      "published_csv": params.llm.published_csv and Path(params.llm.published_csv)})
    runs: dict[str, dict[str, str]] = {}

    features_key = _call(stages.features_task, params, runs, features=params.features, classes=classes, default_seed=0)
    descriptions_key = _call(stages.descriptions_task, params, runs, classes=classes,
                             settings=params.llm.model_dump(), fingerprint=settings.cache_fields())
    embeddings_key = _call(stages.class_embeddings_task, params, runs, descriptions_key=descriptions_key, encoder=params.encoder)
    split_key = _call(stages.split_task, params, runs, features_key=features_key, classes=classes,
                      modalities=params.modalities, seed=params.seed)
    train_cfg = asdict(TrainConfig(epochs=params.epochs, batch_size=params.batch_size, lr=params.lr,
                                   seed=params.seed, device=params.device))
    trained = {
        method: _call(stages.train_task, params, runs, features_key=features_key, split_key=split_key,
                      embeddings_key=embeddings_key, method=method,
                      model_overrides={"top_k": params.top_k} if method == "CSCF" else {}, train_config=train_cfg)
        for method in ("B", "CSCF")
    }
    evaluate_key = _call(stages.evaluate_task, params, runs, features_key=features_key, split_key=split_key,
                         embeddings_key=embeddings_key, trained=trained, dataset=params.dataset_name(), seed=params.seed)

    states = {name: r["state"] for name, r in runs.items()}
    logger.info("stages: %s", ", ".join(f"{k}={v}" for k, v in states.items()))
    outputs = publish(Path(params.workspace), evaluate_key, Path(params.out)) if params.out else {}
    return {"states": states, "keys": {name: r["key"] for name, r in runs.items()}, "outputs": {k: str(v) for k, v in outputs.items()}}

