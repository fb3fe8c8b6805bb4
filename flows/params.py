"""Parameters of the `cscf` flow: one validated pydantic model, so the Prefect UI shows a form."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from cscf_model.calibration import MARGIN_RULES

from tasks.store.catalog import DEFAULT_WORKSPACE
from tasks.ingest.default_dataset import default_classes_path
from tasks.semantics.descriptions import DEFAULT_OFFLINE_TEMPLATE, DEFAULT_TEMPLATE

STAGE_NAMES = ("extract", "features", "descriptions", "class_embeddings", "split", "train", "validate", "evaluate")


class LLMParams(BaseModel):
    """How class descriptions are written (paper appendix A)."""

    mode: Literal["auto", "llm", "offline"] = Field("auto", description="auto: the LLM when OPENAI_API_KEY is set, else the offline writer")
    template: str = Field(str(DEFAULT_TEMPLATE), description="prompt template file with a {class_name} placeholder")
    offline_template: str = Field(str(DEFAULT_OFFLINE_TEMPLATE),
                                  description="the offline writer's phrasings, one per line, each with {class_name}")
    model: str = "gpt-4o-mini"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (vLLM, Ollama); default: OPENAI_BASE_URL")
    temperature: float = 0.0
    n_descriptions: int = Field(1, ge=1, description="descriptions per class, averaged after embedding")
    concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    published_csv: str | None = Field(None, description="CSV of published descriptions (name, description_1, ...)")
    secret_block: str | None = Field(None, description="Prefect Secret block holding the API key, tried when OPENAI_API_KEY is unset")


class ExtractParams(BaseModel):
    """Feature extraction from media files (CLIP image tower for video, CLAP audio branch)."""

    clip_model: str = Field("ViT-B-32", description="open_clip architecture (the paper: ViT-B/32)")
    clip_pretrained: str | None = Field("openai", description="open_clip pretrained tag in the local cache, or a checkpoint path")
    clap_model: str = Field("HTSAT-tiny", description="laion_clap audio config")
    clap_checkpoint: str | None = Field("630k-audioset-best.pt", description="CLAP checkpoint name or path")
    modalities: list[str] = Field(["video", "audio"], description="what to extract from each file")
    frames: str | int = Field("middle", description="'middle' frame, or N frames mean-pooled")
    shard_size: int = Field(256, ge=1, description="manifest rows per output shard (the unit of resumption)")
    batch_size: int = Field(32, ge=1)


class PipelineParams(BaseModel):
    """Everything a run of the `cscf` flow depends on."""

    features: str | None = Field(None, description="Parquet file or folder (CONTRACTS section 1); empty: embedded default dataset")
    manifest: str | None = Field(None, description="media manifest (CSV/Parquet: sample_id, class_name, path[, split]) to extract features from")
    media_root: str | None = Field(None, description="folder the manifest's paths are relative to (default: the manifest's folder)")
    extract: ExtractParams = ExtractParams()
    published: str | None = Field(None, description="root of a published feature set (ClipClap-GZSL .pkl or AVCA-GZSL .h5 layout)")
    published_layout: Literal["auto", "clipclap", "avca"] = "auto"
    classes: str | None = Field(None, description="classes.csv; required with features, manifest or published")
    modalities: list[str] | None = Field(
        None, description="two or more modalities (the first plays A, the second B); default: the first two sorted")
    seen: str = Field("auto", description="which classes each modality saw: auto, halves (the paper's protocol), "
                      "data (the classes it has train rows for) or a CSV file with columns modality, class_name")
    overlap: float = Field(0.0, ge=0.0, lt=1.0, description="with seen=halves: fraction of the classes seen by every modality")
    seed: int = Field(0, description="seeds the class split, the sample split and training")
    workspace: str = Field(str(DEFAULT_WORKSPACE), description="folder of cached stage outputs")
    out: str | None = Field(None, description="folder that receives metrics.json and report.md")
    encoder: str = Field("minilm", description="text encoder for class semantics")
    llm: LLMParams = LLMParams()
    top_k: int = Field(3, ge=1, description="classes kept per row of CSMF's pruned similarity matrix")
    gate_mix: Literal["product", "prior"] = Field(
        "product", description="how CSCF's learned router fuses a sample's modalities: the product of each one's own "
        "distribution over the classes (the default), or the pattern posterior added to their mean logits (the "
        "default before issue 21, ahead on two modalities with disjoint class lists)")
    calibration: Literal["harmonic", "seen-budget"] = Field(
        "harmonic", description="how each modality's calibration margin is chosen on training data: the harmonic mean "
        "of seen and unseen accuracy, or their mean at a cost of at most 3 points of seen accuracy")
    validation: str | None = Field(
        None, description="labelled long-form Parquet file (CONTRACTS section 1) on which the fusion, CSMF top-k and "
        "calibration margins are chosen instead of defaults; empty: the defaults")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(5e-4, gt=0)
    device: str = Field("auto", description="auto: CUDA when present, else CPU")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="training arithmetic, and how the training vectors are held: auto (bf16 where the device "
        "runs bf16 natively, else fp32), fp32 or bf16")
    refresh: list[str] = Field(default_factory=list, description=f"stages to recompute even if cached: {', '.join(STAGE_NAMES)}")
    task_runner: Literal["threads", "dask"] = Field(
        "threads", description="what runs the extraction shards: threads in this process, or a Dask cluster (prefect-dask)")
    dask_address: str | None = Field(
        None, description="scheduler of an existing Dask cluster (tcp://host:8786); empty: a local cluster on 127.0.0.1")

    @field_validator("refresh")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}")
        return v

    @field_validator("modalities")
    @classmethod
    def _two_or_more_modalities(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(f"--modalities needs two or more different names, got {v}")
        return v

    @model_validator(mode="after")
    def _overlap_needs_halves(self) -> PipelineParams:
        if self.overlap and self.seen not in ("auto", "halves"):
            raise ValueError(f"--overlap applies to --seen halves, not --seen {self.seen}")
        return self

    def seen_mode(self) -> tuple[str, str | None]:
        """(mode, seen file): `seen` names a mode of tasks.training.split.SEEN_MODES or a CSV file."""
        return (self.seen, None) if self.seen in ("auto", "halves", "data") else ("file", str(Path(self.seen)))

    @model_validator(mode="after")
    def _address_needs_dask(self) -> PipelineParams:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("--dask-address needs --task-runner dask")
        return self

    def model_overrides(self) -> dict[str, Any]:
        """The model settings the parameters change for CSCF and CSCF (paper); only those set
        away from the model's defaults, so the training keys of a default run stay as they were."""
        rule = {} if self.calibration == "harmonic" else {"calibration_criterion": MARGIN_RULES[self.calibration]}
        mix = {} if self.gate_mix == "product" else {"gate_mix": self.gate_mix}
        return {"top_k": self.top_k, **rule, **mix}

    def classes_path(self) -> str:
        sources = [name for name in ("features", "manifest", "published") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"give one source of features, not {' and '.join('--' + s for s in sources)}")
        if sources and not self.classes:
            raise ValueError(f"--classes is required with --{sources[0]}")
        return str(Path(self.classes)) if self.classes else str(default_classes_path())

    def check_inputs(self) -> None:
        """Fail before any stage starts when an input file is missing."""
        named = {"features": self.features, "classes": self.classes_path(), "manifest": self.manifest,
                 "media root": self.media_root, "published features": self.published,
                 "template": self.llm.template, "published descriptions": self.llm.published_csv,
                 "seen classes": self.seen_mode()[1], "validation": self.validation}
        for what, path in named.items():
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: {what} file not found")

    def dataset_name(self) -> str:
        source = self.features or self.manifest or self.published
        return Path(source).stem if source else "default"
