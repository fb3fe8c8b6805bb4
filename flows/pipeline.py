"""The `cscf` flow: descriptions -> class embeddings, features -> split -> training -> [validation] -> evaluation.

It only wires stages (tasks/stages.py); every stage is cached by its content key, so a
rerun with unchanged inputs recomputes nothing, and a changed input recomputes only
the stages downstream of it. Media extraction runs one task per shard in a sub-flow,
`cscf-extract-shards`, on the task runner `params.task_runner` picks (threads or Dask).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from prefect import flow, get_run_logger, unmapped
from prefect.states import State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from cscf_model import TrainConfig
from tasks import stages
from tasks.semantics.descriptions import DescriptionSettings
from tasks.evaluation.evaluate import publish
from tasks.store.model_file import export_model
from tasks.training.validation import cscf_checkpoint

from .params import STAGE_NAMES, PipelineParams


TRAINED = ("B", "CSCF", "CSCF (paper)")  # the models every run trains; the ablations reuse CSCF's weights


class Wiring:
    """The stages of one run. Each stage is called once, when something first asks for its key.

    This is the one place that says which parameters each stage gets: the full flow asks
    for every stage, a stage flow (flows/stage_flows.py) for one, which calls only the
    stages upstream of it. Same parameters give the same cache keys, so both share a cache.
    """

    def __init__(self, params: PipelineParams) -> None:
        self.params = params
        self.classes = params.classes_path()
        self.runs: dict[str, dict[str, str]] = {}

    def call(self, task: Any, refresh: bool = False, **kwargs: Any) -> str:
        """Run one stage with this workspace's result storage; record its key and final state.

        refresh: not a cache hit even if cached (as for a stage named in params.refresh).
        """
        params, name = self.params, task.name
        configured = task.with_options(
            result_storage=stages.results_dir(params.workspace), refresh_cache=refresh or name in params.refresh
        )
        state: State = configured(workspace=params.workspace, **kwargs, return_state=True)
        label = f"{name}[{kwargs['method']}]" if "method" in kwargs else name
        key = state.result()
        self.runs[label] = {"state": state.name, "key": key}
        return key

    @cached_property
    def extract(self) -> str | None:
        """Key of the media extraction, when the features come from a manifest.

        The missing shards run first, one task each, on the task runner the parameters
        choose; the stage task then checks them and marks the extraction complete. A run
        that extracted shards is never reported as a cache hit of the stage.
        """
        p = self.params
        if not p.manifest:
            return None
        inputs = {"manifest": p.manifest, "media_root": p.media_root or str(Path(p.manifest).parent),
                  "settings": p.extract.model_dump()}
        key, shards = stages.extraction_plan(p.workspace, **inputs)
        if shards:
            extract_shards.with_options(task_runner=task_runner(p))(workspace=p.workspace, key=key, shards=shards, **inputs)
        return self.call(stages.extract_task, refresh=bool(shards), **inputs)

    @cached_property
    def features(self) -> str:
        p = self.params
        return self.call(stages.features_task, features=p.features, classes=self.classes, default_seed=0,
                          extracted=self.extract, published=p.published, published_layout=p.published_layout)

    @property
    def description_settings(self) -> DescriptionSettings:
        llm = self.params.llm
        return DescriptionSettings(**{**llm.model_dump(), "template": Path(llm.template),
                                      "published_csv": llm.published_csv and Path(llm.published_csv)})

    @cached_property
    def descriptions(self) -> str:
        return self.call(stages.descriptions_task, classes=self.classes,
                          settings=self.params.llm.model_dump(), fingerprint=self.description_settings.cache_fields())

    @cached_property
    def class_embeddings(self) -> str:
        return self.call(stages.class_embeddings_task, descriptions_key=self.descriptions, encoder=self.params.encoder)

    @cached_property
    def split(self) -> str:
        p = self.params
        seen, seen_file = p.seen_mode()
        return self.call(stages.split_task, features_key=self.features, classes=self.classes, modalities=p.modalities,
                          seed=p.seed, seen=seen, overlap=p.overlap, seen_file=seen_file)

    @property
    def train_config(self) -> dict[str, Any]:
        """Optimisation settings shared by CSCF, its ablation B and the baselines."""
        p = self.params
        return asdict(TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, device=p.device,
                                  precision=p.precision))

    @cached_property
    def train(self) -> dict[str, str]:
        """Training key per trained model: the ablation baseline "B", the project's "CSCF" and
        "CSCF (paper)", the paper's recipe as written (no geometry keeping, no calibration)."""
        return {
            method: self.call(stages.train_task, features_key=self.features, split_key=self.split,
                               embeddings_key=self.class_embeddings, method=method,
                               model_overrides=self.params.model_overrides() if method != "B" else {},
                               train_config=self.train_config)
            for method in TRAINED
        }

    @cached_property
    def validate(self) -> str | None:
        """Key of CSCF with its fusion, top-k and margins chosen on `params.validation`; None
        (no stage run) without validation data."""
        if not self.params.validation:
            return None
        return self.call(stages.validate_task, validation=self.params.validation, train_key=self.train["CSCF"])

    @cached_property
    def evaluate(self) -> str:
        return self.call(stages.evaluate_task, features_key=self.features, split_key=self.split,
                          embeddings_key=self.class_embeddings, trained=self.train,
                          dataset=self.params.dataset_name(), seed=self.params.seed, validation_key=self.validate)

    def baseline(self, method: str) -> str:
        """Key of one baseline's training and evaluation (`cscf benchmark`), on the same data and seed."""
        return self.call(stages.baseline_task, features_key=self.features, split_key=self.split,
                          embeddings_key=self.class_embeddings, method=method, train_config=self.train_config)

    def summary(self) -> dict[str, dict[str, str]]:
        """Final state and key of every stage called, by label (`train[CSCF]`, ...)."""
        return {"states": {k: r["state"] for k, r in self.runs.items()}, "keys": {k: r["key"] for k, r in self.runs.items()}}


# In-process workers, reached over TCP on 127.0.0.1 only; the HTTP endpoint on a free port there too.
LOCAL_CLUSTER = {"processes": False, "protocol": "tcp", "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def task_runner(params: PipelineParams) -> TaskRunner:
    """The runner of the extraction shards: threads here, or a Dask cluster.

    Without an address the cluster is a temporary in-process one (threads, TCP on
    127.0.0.1 only), so its workers share this process's Prefect API, even an ephemeral one.
    The workers of a cluster given by address import this project and report to the flow's
    API, so that one must be a server they can reach (PREFECT_API_URL), not an ephemeral one.
    """
    if params.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=os.cpu_count())
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise RuntimeError("--task-runner dask needs prefect-dask: pip install 'cscf[dask]'") from e
    if params.dask_address:
        return DaskTaskRunner(address=params.dask_address)
    return DaskTaskRunner(cluster_kwargs=LOCAL_CLUSTER)


@flow(name="cscf-extract-shards", log_prints=False)
def extract_shards(workspace: str, key: str, manifest: str, media_root: str, settings: dict[str, Any],
                   shards: list[int]) -> list[str]:
    """Extract some shards of the extraction `key`, one task run each, on this flow's task runner."""
    return stages.extract_shard_task.map(workspace=workspace, key=key, manifest=manifest, media_root=media_root,
                                         settings=unmapped(settings), shard=shards).result()


def run_stages(params: PipelineParams, names: Iterable[str]) -> Wiring:
    """Run the named stages in order, each after the stages it needs; log every stage's state."""
    wiring = Wiring(params)
    for name in names:
        if name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
        getattr(wiring, name)
    get_run_logger().info("stages: %s", ", ".join(f"{k}={v}" for k, v in wiring.summary()["states"].items()))
    return wiring


@flow(name="cscf", log_prints=False)
def cscf(params: PipelineParams = PipelineParams()) -> dict[str, Any]:
    """Run every stage of CSCF on one dataset and write metrics.json and report.md."""
    wiring = run_stages(params, STAGE_NAMES)
    outputs = publish(Path(params.workspace), wiring.evaluate, Path(params.out)) if params.out else {}
    if params.out:
        chosen = cscf_checkpoint(Path(params.workspace), wiring.train["CSCF"], wiring.validate)  # what evaluate scored
        outputs["model"] = export_model(chosen, Path(params.out) / "model", encoder=params.encoder,
                                        descriptions=wiring.description_settings.model_record(),
                                        extraction=params.extract.model_dump() if params.manifest else None)
    return {**wiring.summary(), "outputs": {k: str(v) for k, v in outputs.items()}}
