"""One flow per stage, so each stage can be deployed and run alone (CONTRACTS section 4).

A stage flow runs its stage and the stages upstream of it through the full flow's own
wiring (`flows.pipeline.run_stages`), with the same parameter model. The cache keys are
therefore the full pipeline's: `cscf-stage-split` after `cscf` is all cache hits, and
`cscf` after `cscf-stage-train` computes only the evaluation.
"""

from __future__ import annotations

from prefect import Flow, flow

from .params import PipelineParams
from .pipeline import run_stages

_DESCRIPTIONS = {
    "extract": "Extract CLIP/CLAP features from the media files of params.manifest into Parquet shards.",
    "features": "Validate the features; refused rows go to features/<key>.rejected.parquet.",
    "descriptions": "Write one description per class (classes.csv, published CSV, LLM or offline writer).",
    "class_embeddings": "Embed the class descriptions with the text encoder.",
    "split": "Decide which classes each modality saw (data, halves or a file) and split the samples into train and test.",
    "train": "Train CSCF and the baseline B.",
    "validate": "Choose CSCF's fusion, CSMF top-k and margins on params.validation (nothing to do without it).",
    "evaluate": "Evaluate every method; unlike `cscf`, nothing is copied to params.out.",
}


def _stage_flow(stage: str) -> Flow:
    def run_stage(params: PipelineParams = PipelineParams()) -> dict[str, dict[str, str]]:
        return run_stages(params, [stage]).summary()

    return flow(run_stage, name=f"cscf-stage-{stage.replace('_', '-')}", description=_DESCRIPTIONS[stage])


extract = _stage_flow("extract")
features = _stage_flow("features")
descriptions = _stage_flow("descriptions")
class_embeddings = _stage_flow("class_embeddings")
split = _stage_flow("split")
train = _stage_flow("train")
validate = _stage_flow("validate")
evaluate = _stage_flow("evaluate")
