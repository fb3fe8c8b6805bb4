"""The embedded default dataset: SYNTHETIC audio and video features for everyday classes.

`cscf run` with no arguments must work offline, so the project makes its own data.
The features are synthetic, but their geometry comes from real text semantics: each
class in tasks/ingest/default/classes.csv has a `sound` and a `look` sentence, and MiniLM
embeddings of those sentences become the class centres. So classes that sound alike
(a hair dryer and a vacuum cleaner) crowd together in audio, classes that look alike
(guitar and ukulele) crowd together in video, and the two modalities make different
mistakes, which is what cross-modal fusion needs in order to help.

- `video` lives in the MiniLM text space (as CLIP image features live in CLIP's text
  space), so a training-free cosine rule against class-name embeddings recognises
  classes that video never saw: zero-shot transfer is possible, as with real features.
- `audio` is the sound centre sent through a fixed random linear map to another
  dimension: geometry follows semantics, but the space is not the text space.

tasks/ingest/default/README.md states the recipe and the measured quality (`python -m
tasks.ingest.default_dataset` prints it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.store import catalog
from tasks.encoders.text_encoders import TextEncoder, build_text_encoder

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

ENCODER = "minilm"
EMBEDDING_DECIMALS = 5


@dataclass(frozen=True)
class ModalityRecipe:
    """How one modality's features are drawn around its class centres."""

    name: str
    text_column: str  # which generator text of classes.csv gives the class centres
    dim: int | None  # output dimension of the fixed random map; None keeps the text space
    rank: int  # within-class variation directions per class (pose, recording conditions)
    spread: float  # std of the coefficient along each variation direction
    noise: float  # expected norm of the isotropic noise
    confused_pairs: tuple[tuple[str, str], ...]  # drawn together to `pair_cosine`
    pair_cosine: float
    normalise: bool  # unit-norm rows, as CLIP image features are


AUDIO = ModalityRecipe(
    name="audio",
    text_column="sound",
    dim=512,
    rank=4,
    spread=0.6,
    noise=3.5,
    # The text alone keeps these apart; a microphone would not.
    confused_pairs=(("rain on a window", "frying food"), ("applause", "rain on a window")),
    pair_cosine=0.9,
    normalise=False,
)
VIDEO = ModalityRecipe(
    name="video",
    text_column="look",
    dim=None,
    rank=4,
    spread=0.6,
    noise=3.5,
    # Their look sentences are already close; this makes the closeness a fixed choice.
    confused_pairs=(
        ("playing acoustic guitar", "playing ukulele"),
        ("dog barking", "dog growling"),
        ("car engine starting", "car horn"),
    ),
    pair_cosine=0.9,
    normalise=True,
)
RECIPES = (AUDIO, VIDEO)


@dataclass(frozen=True)
class GeneratorClasses:
    """The class list plus the generator-only texts (never shown to the pipeline)."""

    names: list[str]
    texts: dict[str, list[str]]  # column ('sound', 'look') -> one sentence per class


def default_classes_path() -> Path:
    """default/classes.csv (package data of tasks.ingest): the class names and their
    sound/look sentences."""
    return Path(str(resources.files("tasks.ingest") / "default" / "classes.csv"))


def read_generator_classes(path: Path) -> GeneratorClasses:
    """Read classes.csv with its `sound` and `look` columns, naming any bad row."""
    columns = ["class_name"] + [recipe.text_column for recipe in RECIPES]
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        rows = list(reader)
    cells = [{c: (row[c] or "").strip() for c in columns} for row in rows]
    seen: set[str] = set()
    for line, row in enumerate(cells, start=2):
        empty = [c for c in columns if not row[c]]
        if empty:
            raise ValueError(f"{path}:{line}: empty {empty} for class {row['class_name']!r}")
        if row["class_name"] in seen:
            raise ValueError(f"{path}:{line}: duplicate class {row['class_name']!r}")
        seen.add(row["class_name"])
    return GeneratorClasses(
        names=[row["class_name"] for row in cells],
        texts={c: [row[c] for row in cells] for c in columns[1:]},
    )


@lru_cache(maxsize=8)
def text_centres_of(texts: tuple[str, ...]) -> np.ndarray:
    """MiniLM embeddings of the generator texts, computed once per process (seeds reuse them).

    Rounded so that last-bit differences between CPU kernels cannot change the table.
    """
    vectors = build_text_encoder(ENCODER).encode(texts).astype(np.float64)
    centres = np.round(vectors, EMBEDDING_DECIMALS)
    centres.flags.writeable = False
    return centres


def draw_together(centres: np.ndarray, names: list[str], recipe: ModalityRecipe) -> np.ndarray:
    """Move each confused pair towards its midpoint until their cosine is about pair_cosine.

    The pair keeps its midpoint, so the rest of the geometry is untouched. Exact for
    unit-norm centres; a class in two pairs lands near, not on, the target the second time.
    """
    out = centres.copy()
    index = {name: i for i, name in enumerate(names)}
    for a, b in recipe.confused_pairs:
        for name in (a, b):
            if name not in index:
                raise ValueError(
                    f"recipe {recipe.name!r}: confused class {name!r} is not in classes.csv"
                )
        i, j = index[a], index[b]
        mid, half = (out[i] + out[j]) / 2, (out[i] - out[j]) / 2
        # cos(mid + t*half, mid - t*half) = (|mid|^2 - t^2|half|^2) / (|mid|^2 + t^2|half|^2)
        target = recipe.pair_cosine
        ratio = float(mid @ mid) / max(float(half @ half), 1e-12)
        t = min(1.0, np.sqrt(ratio * (1 - target) / (1 + target)))
        out[i], out[j] = mid + t * half, mid - t * half
    return out


def class_geometry(
    recipe: ModalityRecipe, text_centres: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Class centres in the modality's space and each class's variation directions."""
    centres = text_centres
    if recipe.dim is not None:
        projection = rng.standard_normal((text_centres.shape[1], recipe.dim)) / np.sqrt(recipe.dim)
        centres = text_centres @ projection
    n_classes, dim = centres.shape
    directions = rng.standard_normal((n_classes, recipe.rank, dim))
    directions /= np.linalg.norm(directions, axis=2, keepdims=True)
    return centres, directions


def draw_samples(
    recipe: ModalityRecipe,
    centres: np.ndarray,
    directions: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """centre + low-rank within-class variation + isotropic noise, one row per label."""
    dim = centres.shape[1]
    coefficients = rng.standard_normal((len(labels), recipe.rank)) * recipe.spread
    variation = np.einsum("nr,nrd->nd", coefficients, directions[labels])
    noise = rng.standard_normal((len(labels), dim)) * (recipe.noise / np.sqrt(dim))
    vectors = centres[labels] + variation + noise
    if recipe.normalise:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def _vector_column(vectors: np.ndarray) -> pa.ListArray:
    """Rows of a float32 matrix as a list<float32> column, without a Python loop."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def make_default_dataset(
    seed: int = 0, train_per_class: int = 80, test_per_class: int = 30
) -> pa.Table:
    """The default dataset in catalog.FEATURES form: every sample has an audio and a video row.

    The same seed gives the same table. Class geometry (random map, variation
    directions) is drawn from its own stream, so changing the sample counts does not
    change the classes, only how many samples are drawn from them.
    """
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"need at least one train and one test sample per class, "
            f"got train_per_class={train_per_class}, test_per_class={test_per_class}"
        )
    classes = read_generator_classes(default_classes_path())
    per_class = train_per_class + test_per_class
    labels = np.repeat(np.arange(len(classes.names)), per_class)
    splits = np.tile(["train"] * train_per_class + ["test"] * test_per_class, len(classes.names))
    sample_ids = [
        f"{name.replace(' ', '-')}-{i:03d}" for name in classes.names for i in range(per_class)
    ]
    geometry_rng, sample_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))

    blocks = []
    for recipe in RECIPES:
        text_centres = text_centres_of(tuple(classes.texts[recipe.text_column]))
        text_centres = draw_together(text_centres, classes.names, recipe)
        centres, directions = class_geometry(recipe, text_centres, geometry_rng)
        vectors = draw_samples(recipe, centres, directions, labels, sample_rng)
        blocks.append(
            pa.table(
                {
                    "sample_id": sample_ids,
                    "class_name": [classes.names[k] for k in labels],
                    "modality": [recipe.name] * len(labels),
                    "vector": _vector_column(vectors),
                    "split": splits.tolist(),
                }
            )
        )
    return pa.concat_tables(blocks).cast(catalog.FEATURES)


def _modality_arrays(table: pa.Table, modality: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and class names of one modality and split."""
    rows = table.filter(
        pc.and_(pc.equal(table["modality"], modality), pc.equal(table["split"], split))
    )
    vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    return vectors, np.asarray(rows["class_name"].to_pylist())


def _probe(x: np.ndarray, y: np.ndarray) -> Pipeline:
    """A standardised linear probe; sklearn is imported here so generation does not need it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)


def _confusion_shares(truth: np.ndarray, predicted: np.ndarray) -> dict[tuple[str, str], float]:
    """Per unordered class pair, the share of its test samples mistaken for the other class."""
    counts: dict[tuple[str, str], int] = {}
    for t, p in zip(truth.tolist(), predicted.tolist()):
        if t != p:
            a, b = sorted((t, p))
            counts[(a, b)] = counts.get((a, b), 0) + 1
    per_class = {c: int((truth == c).sum()) for c in set(truth.tolist())}
    return {pair: n / (per_class[pair[0]] + per_class[pair[1]]) for pair, n in counts.items()}


def measure_quality(
    table: pa.Table, encoder: TextEncoder | None = None, seed: int = 0, top: int = 3
) -> dict[str, Any]:
    """The figures that say whether the dataset is fit for MMHCL (tasks/ingest/default/README.md).

    - probe_accuracy: a linear probe per modality on all classes (should be high, not perfect);
    - most_confused: per modality, the pairs its probe mixes up most, each with the
      share of the pair's samples confused by each modality (the lists should differ);
    - video_zero_shot: cosine rule of video test features against class-NAME embeddings;
    - seen_certainty / routing_accuracy: each modality's probe trained on half the
      classes (the MMHCL split); mean top probability on classes it saw vs did not see,
      and how often "trust the more certain modality" picks the one that saw the class.
    """
    encoder = encoder or build_text_encoder(ENCODER)
    names = sorted(set(table["class_name"].to_pylist()))
    result: dict[str, Any] = {"classes": len(names), "probe_accuracy": {}, "most_confused": {}}
    data, shares = {}, {}
    for recipe in RECIPES:
        x_train, y_train = _modality_arrays(table, recipe.name, "train")
        x_test, y_test = _modality_arrays(table, recipe.name, "test")
        data[recipe.name] = (x_train, y_train, x_test, y_test)
        predicted = _probe(x_train, y_train).predict(x_test)
        result["probe_accuracy"][recipe.name] = round(float((predicted == y_test).mean()), 4)
        shares[recipe.name] = _confusion_shares(y_test, predicted)
    for modality, own in shares.items():
        ranked = sorted(own, key=lambda pair: (-own[pair], pair))[:top]
        result["most_confused"][modality] = [
            {"pair": list(pair), **{m: round(shares[m].get(pair, 0.0), 3) for m in shares}}
            for pair in ranked
        ]

    x_test, y_test = data[VIDEO.name][2:]
    name_vectors = encoder.encode(names)
    zero_shot = np.asarray(names)[(x_test @ name_vectors.T).argmax(axis=1)]
    result["video_zero_shot"] = round(float((zero_shot == y_test).mean()), 4)
    result["chance"] = round(1 / len(names), 4)

    order = np.random.default_rng(seed).permutation(names)
    halves = {AUDIO.name: set(order[: len(names) // 2]), VIDEO.name: set(order[len(names) // 2 :])}
    top_probability = {}
    result["seen_certainty"] = {}
    for modality, seen in halves.items():
        x_train, y_train, x_test, y_test = data[modality]
        keep = np.isin(y_train, list(seen))
        probability = _probe(x_train[keep], y_train[keep]).predict_proba(x_test).max(axis=1)
        top_probability[modality] = probability
        saw = np.isin(y_test, list(seen))
        result["seen_certainty"][modality] = {
            "seen": round(float(probability[saw].mean()), 3),
            "unseen": round(float(probability[~saw].mean()), 3),
        }
    # Both modalities' test rows come in the same sample order, so rows align.
    audio_wins = top_probability[AUDIO.name] > top_probability[VIDEO.name]
    audio_saw = np.isin(data[AUDIO.name][3], list(halves[AUDIO.name]))
    result["routing_accuracy"] = round(float((audio_wins == audio_saw).mean()), 4)
    return result


if __name__ == "__main__":
    print(json.dumps(measure_quality(make_default_dataset()), indent=2))
