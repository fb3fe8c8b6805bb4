"""cscf_model: CSCF and its ablations in pure PyTorch (no files, no Prefect)."""

from .config import MapperConfig, ModelConfig, list_models, load_config
from .cscf import CSCF, CSCFOutput, Encoded
from .factory import create_model, model_from_checkpoint
from .data import TrainData
from .trainer import TrainConfig, train

__all__ = [
    "CSCF",
    "CSCFOutput",
    "Encoded",
    "MapperConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainData",
    "create_model",
    "list_models",
    "load_config",
    "model_from_checkpoint",
    "train",
]
