"""Parameters of the `cscf` flow: one validated pydantic model, so the Prefect UI shows a form."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from tasks.catalog import DEFAULT_WORKSPACE
from tasks.default_dataset import default_classes_path
from tasks.descriptions import DEFAULT_TEMPLATE

STAGE_NAMES = ("features", "descriptions", "class_embeddings", "split", "train", "evaluate")


class LLMParams(BaseModel):
    """How class descriptions are written (paper appendix A)."""

    mode: Literal["auto", "llm", "offline"] = Field("auto", description="auto: the LLM when OPENAI_API_KEY is set, else the offline writer")
    template: str = Field(str(DEFAULT_TEMPLATE), description="prompt template file with a {class_name} placeholder")
    model: str = "gpt-4o-mini"
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (vLLM, Ollama); default: OPENAI_BASE_URL")
    temperature: float = 0.0
    n_descriptions: int = Field(1, ge=1, description="descriptions per class, averaged after embedding")
    concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    published_csv: str | None = Field(None, description="CSV of published descriptions (name, description_1, ...)")


class PipelineParams(BaseModel):
    """Everything a run of the `cscf` flow depends on."""

    features: str | None = Field(None, description="Parquet file or folder (CONTRACTS section 1); empty: embedded default dataset")
    classes: str | None = Field(None, description="classes.csv; required with `features`")
    modalities: list[str] | None = Field(None, description="the two modalities playing A and B; default: first two sorted")
    seed: int = Field(0, description="seeds the class split, the sample split and training")
    workspace: str = Field(str(DEFAULT_WORKSPACE), description="folder of cached stage outputs")
    out: str | None = Field(None, description="folder that receives metrics.json and report.md")
    encoder: str = Field("minilm", description="text encoder for class semantics")
    llm: LLMParams = LLMParams()
    top_k: int = Field(3, ge=1, description="classes kept per row of CSMF's pruned similarity matrix")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(5e-4, gt=0)
    device: str = Field("auto", description="auto: CUDA when present, else CPU")
    refresh: list[str] = Field(default_factory=list, description=f"stages to recompute even if cached: {', '.join(STAGE_NAMES)}")

    @field_validator("refresh")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}")
        return v

    @field_validator("modalities")
    @classmethod
    def _two_modalities(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (len(v) != 2 or v[0] == v[1]):
            raise ValueError(f"--modalities needs two different names, got {v}")
        return v

    def classes_path(self) -> str:
        if self.features and not self.classes:
            raise ValueError("--classes is required with --features")
        return str(Path(self.classes)) if self.classes else str(default_classes_path())

    def check_inputs(self) -> None:
        """Fail before any stage starts when an input file is missing."""
        named = {"features": self.features, "classes": self.classes_path(),
                 "template": self.llm.template, "published descriptions": self.llm.published_csv}
        for what, path in named.items():
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: {what} file not found")

    def dataset_name(self) -> str:
        return Path(self.features).stem if self.features else "default"
