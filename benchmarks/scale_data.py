"""A synthetic dataset of VGGSound-GZSL's size (or AudioSet's) with the embedded default's class structure.

VGGSound-GZSL has 271 classes, 1024-d CLAP audio and 512-d CLIP video features and
about 150 thousand training clips; AudioSet-derived collections have 527 classes and about
13 times the clips (`scale_size`). The default dataset (tasks/ingest/default_dataset.py) has
32 classes whose centres are MiniLM embeddings of their sound and look sentences, with
confused pairs and low-rank within-class variation. Here class k is variant k // 32 of
default class k % 32: its text centre is the default's, moved a fixed random step
away, so variants of one class crowd together as VGGSound's many similar classes do
("dog barking", "dog growling", "dog howling"). The default's recipes then map the
centres to 1024-d audio and 512-d video and draw the samples.

Only NumPy and PyArrow are used after the centres are known, so `write_scale_dataset`
also runs where the text encoder is absent (the GPU machine) when given the centres
saved by `save_centres`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from tasks.store import catalog

CLASSES, AUDIO_DIM, VIDEO_DIM = 271, 1024, 512
AUDIOSET_CLASSES = 527  # the class count of sizes beyond VGGSound's (scale_size)
FULL_TRAIN, FULL_TEST = 150_000, 50_000  # clips, each seen through audio and video
VARIANT_STEP = 0.6  # distance of a variant's text centre from its default class (unit-norm centres)
CHUNK = 4096  # samples drawn and written at a time, to bound the generator's memory


@dataclass(frozen=True)
class ScaleSize:
    """Clips per class in each split at a multiple `fraction` of VGGSound-GZSL's clip counts, over `classes` classes."""

    fraction: float
    classes: int = CLASSES

    @property
    def train_per_class(self) -> int:
        return max(1, round(FULL_TRAIN * self.fraction / self.classes))

    @property
    def test_per_class(self) -> int:
        return max(1, round(FULL_TEST * self.fraction / self.classes))

    @property
    def train(self) -> int:
        return self.train_per_class * self.classes

    @property
    def test(self) -> int:
        return self.test_per_class * self.classes


def scale_size(fraction: float) -> ScaleSize:
    """The size measured at `fraction`: VGGSound's 271 classes up to its size, AudioSet's 527
    beyond it (13: about 2 million training clips, AudioSet-derived collections' size)."""
    return ScaleSize(fraction, AUDIOSET_CLASSES if fraction > 1 else CLASSES)


def class_names(classes: int = CLASSES) -> list[str]:
    """`<default class> <variant>` for `classes` classes; variant 0 keeps the default's name."""
    from tasks.ingest.default_dataset import default_classes_path, read_generator_classes

    base = read_generator_classes(default_classes_path()).names
    return [base[k % len(base)] + ("" if k < len(base) else f" {k // len(base)}") for k in range(classes)]


def text_centres(seed: int = 0, classes: int = CLASSES) -> dict[str, np.ndarray]:
    """Per recipe, the (classes, 384) text centres: the default's (MiniLM, confused pairs drawn
    together), each variant moved VARIANT_STEP away along a seeded random direction."""
    from tasks.ingest.default_dataset import (
        RECIPES, draw_together, text_centres_of, default_classes_path, read_generator_classes)

    default = read_generator_classes(default_classes_path())
    rng = np.random.default_rng([seed, 7])
    out = {}
    for recipe in RECIPES:
        base = draw_together(text_centres_of(tuple(default.texts[recipe.text_column])), default.names, recipe)
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        k = np.arange(classes)
        step = rng.standard_normal((classes, base.shape[1]))
        step *= VARIANT_STEP / np.linalg.norm(step, axis=1, keepdims=True)
        centres = base[k % len(base)] + np.where((k >= len(base))[:, None], step, 0.0)
        out[recipe.name] = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    return out


def save_centres(path: Path, seed: int = 0, classes: int = CLASSES) -> Path:
    """Class names, text centres and MiniLM class-name embeddings in one .npz, for
    generating and training where the text encoder is absent (the GPU machine)."""
    from tasks.encoders.text_encoders import build_text_encoder

    names = class_names(classes)
    np.savez(path, names=np.array(names), class_emb=build_text_encoder("minilm").encode(names),
             **text_centres(seed, classes))
    return Path(path)


def scale_tables(size: ScaleSize, centres_file: Path | None = None, seed: int = 0) -> Iterator[pa.Table]:
    """The dataset in FEATURES form, CHUNK clips at a time (an audio and a video row each).
    Same seed and size, same rows."""
    from tasks.ingest.default_dataset import AUDIO, VIDEO, class_geometry, draw_samples

    if centres_file is not None:
        saved = np.load(centres_file)
        names, centres = saved["names"].tolist(), {r.name: saved[r.name] for r in (AUDIO, VIDEO)}
        if len(names) != size.classes:
            raise ValueError(f"{centres_file}: {len(names)} classes, the size asks for {size.classes}")
    else:
        names, centres = class_names(size.classes), text_centres(seed, size.classes)
    recipes = (replace(AUDIO, dim=AUDIO_DIM), replace(VIDEO, dim=VIDEO_DIM))
    geometry_rng = np.random.default_rng([seed, 0])
    geometry = {r.name: class_geometry(r, centres[r.name], geometry_rng) for r in recipes}
    per_class = size.train_per_class + size.test_per_class
    labels = np.repeat(np.arange(len(names)), per_class)
    is_train = np.tile(np.arange(per_class) < size.train_per_class, len(names))
    sample_rng = np.random.default_rng([seed, 1])
    for start in range(0, len(labels), CHUNK):
        y = labels[start : start + CHUNK]
        ids = pa.array([f"clip{i:07d}" for i in range(start, start + len(y))])
        split = pa.array(np.where(is_train[start : start + len(y)], "train", "test"))
        for recipe in recipes:
            vectors = draw_samples(recipe, *geometry[recipe.name], y, sample_rng)
            yield pa.table({
                "sample_id": ids,
                "class_name": pa.array(np.asarray(names, dtype=object)[y]),
                "modality": pa.array([recipe.name] * len(y)),
                "vector": catalog.vector_column(vectors),
                "split": split,
            })


def write_scale_dataset(
    root: Path, size: ScaleSize, centres_file: Path | None = None, seed: int = 0
) -> tuple[Path, Path]:
    """Write `root/features.parquet` (scale_tables) and `root/classes.csv`; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    features = root / "features.parquet"
    with catalog.batch_writer(features, catalog.FEATURES) as write:
        for table in scale_tables(size, centres_file, seed):
            write(table)
    classes = root / "classes.csv"
    with catalog.atomic_path(classes) as tmp, tmp.open("w", newline="") as handle:
        csv.writer(handle).writerows([["class_name"], *[[n] for n in class_names(size.classes)]])
    return features, classes
