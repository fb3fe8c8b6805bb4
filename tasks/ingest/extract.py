"""Extraction stage: CLIP image and CLAP audio features from the media files of a manifest.

The paper's features come from pre-trained CLIP (video frames) and CLAP (audio), as
in ClipClap-GZSL. This stage turns a manifest (`sample_id, class_name, path[, split]`,
CSV or Parquet, paths relative to a root folder) into long-form feature rows, one per
(sample, modality), with the encoder's name and version on every row.

Work is cut into shards of `shard_size` manifest rows (shard i = rows
[i*size, (i+1)*size)), each written atomically as `shard-00000.parquet`; a rerun after
an interruption only computes the shards whose file is missing, and a flow can map
`extract_shard` over shard numbers. Files that cannot be read are recorded in
`_failures-00000.parquet` (one per shard) and skipped. The names of everything that is
not a feature shard start with "_", which Parquet dataset readers skip, so the output
folder can be passed as a features folder as it is (CONTRACTS section 1).

The output folder is tied to one manifest and one `ExtractSettings`; callers name it
by a key of both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tasks.store import catalog
from tasks.ingest.media import decode_audio, decode_frames
from tasks.encoders.media_encoders import (
    AudioEncoder,
    AudioEncoderSpec,
    ImageEncoder,
    ImageEncoderSpec,
    build_audio_encoder,
    build_image_encoder,
)

VIDEO, AUDIO = "video", "audio"
MANIFEST_COLUMNS = ("sample_id", "class_name", "path")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ExtractSettings:
    """What to extract and how. `batch_size`, `device`, `workers` and `progress` only change how
    (and, for the first two, float rounding); the other fields change what is extracted."""

    image: ImageEncoderSpec = field(default_factory=ImageEncoderSpec)
    audio: AudioEncoderSpec = field(default_factory=AudioEncoderSpec)
    modalities: tuple[str, ...] = (VIDEO, AUDIO)
    frames: str | int = "middle"  # "middle" (ClipClap-GZSL) or N evenly spaced frames, mean-pooled
    shard_size: int = 256  # manifest rows per output file: the unit of resumption
    batch_size: int = 32  # clips per encoder forward pass
    device: str | None = None  # None: CUDA when available
    workers: int = 4  # decoding threads, which overlap decoding with the encoder
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modalities) - {VIDEO, AUDIO})
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"modalities must be distinct names from {(VIDEO, AUDIO)}, got {self.modalities}"
            )
        if self.frames != "middle" and not (isinstance(self.frames, int) and self.frames >= 1):
            raise ValueError(f"frames must be 'middle' or a positive int, got {self.frames!r}")
        for name in ("shard_size", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_flat(cls, fields: dict[str, Any]) -> "ExtractSettings":
        """From the flat form the flow's parameters use (clip_model, clip_pretrained,
        clap_model, clap_checkpoint, modalities, frames, shard_size, batch_size)."""
        return cls(
            image=ImageEncoderSpec(fields["clip_model"], fields["clip_pretrained"]),
            audio=AudioEncoderSpec(fields["clap_model"], fields["clap_checkpoint"]),
            modalities=tuple(fields["modalities"]), frames=fields["frames"], shard_size=fields["shard_size"],
            batch_size=fields["batch_size"], progress=False,
        )

    @property
    def frame_count(self) -> int:
        return 1 if self.frames == "middle" else int(self.frames)


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest's rows with string columns sample_id, class_name, path, split (None when absent).

    Errors name the file and the row (and the line, for CSV).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{path}: a manifest is a .csv or .parquet file")
    try:
        table = (
            pd.read_csv(path, dtype=str, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        )
    except ValueError as e:  # pandas' and pyarrow's parse errors
        raise ValueError(f"{path}: not a readable manifest ({e})") from e
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; a manifest has sample_id, class_name, path[, split]"
        )
    if table.empty:
        raise ValueError(f"{path}: the manifest has no rows")
    if "split" not in table.columns:
        table["split"] = ""
    table = table[[*MANIFEST_COLUMNS, "split"]].astype(object)
    table = table.where(table.notna(), "").astype(str).apply(lambda column: column.str.strip())

    def where(i: int) -> str:
        return f"row {i + 1}" + (f" (line {i + 2})" if suffix == ".csv" else "")

    for column in MANIFEST_COLUMNS:
        empty = np.flatnonzero(table[column].to_numpy() == "")
        if len(empty):
            raise ValueError(f"{path}: {where(int(empty[0]))}: empty {column!r}")
    duplicated = np.flatnonzero(table["sample_id"].duplicated().to_numpy())
    if len(duplicated):
        i = int(duplicated[0])
        first = int(np.flatnonzero(table["sample_id"].to_numpy() == table["sample_id"].iat[i])[0])
        raise ValueError(
            f"{path}: {where(i)}: sample_id {table['sample_id'].iat[i]!r} is already on {where(first)}"
        )
    escaping = [i for i, p in enumerate(table["path"]) if _escapes_root(p)]
    if escaping:
        i = escaping[0]
        raise ValueError(f"{path}: {where(i)}: path {table['path'].iat[i]!r} leaves the media root; "
                         f"paths must be relative and stay inside it ({len(escaping)} such row(s))")
    bad_split = np.flatnonzero(~table["split"].isin([*SPLITS, ""]).to_numpy())
    if len(bad_split):
        i = int(bad_split[0])
        raise ValueError(
            f"{path}: {where(i)}: split {table['split'].iat[i]!r} is not 'train', 'test' or empty"
        )
    table["split"] = table["split"].astype(object).where(table["split"] != "", None)
    return table.reset_index(drop=True)


def _escapes_root(path: str) -> bool:
    """An absolute path, or one whose `..` climbs above the folder it is relative to: a
    manifest from someone else must not make the run read files outside the media root."""
    return os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == ".."


def shard_count(rows: int, shard_size: int) -> int:
    return math.ceil(rows / shard_size)


def shard_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"shard-{shard:05d}.parquet"


def failures_path(out_dir: Path, shard: int) -> Path:
    return Path(out_dir) / f"_failures-{shard:05d}.parquet"


def extract_features(manifest: Path, root: Path, settings: ExtractSettings, out_dir: Path) -> list[Path]:
    """Extract every shard of `manifest` whose file is missing in `out_dir`; all shard paths, in order.

    Stops with an error only when no file of the manifest exists under `root` (a wrong
    root) or when not a single (sample, modality) could be extracted.
    """
    rows = read_manifest(manifest)
    root, out_dir = Path(root), Path(out_dir)
    if not any((root / p).exists() for p in rows["path"]):
        raise FileNotFoundError(
            f"{manifest}: none of its {len(rows)} paths exists under {root} (row 1: {rows['path'].iat[0]!r})"
        )
    _claim(out_dir, _identity(manifest, settings))
    paths = [shard_path(out_dir, i) for i in range(shard_count(len(rows), settings.shard_size))]
    todo = [i for i, path in enumerate(paths) if not path.exists()]
    with _progress(sum(len(_shard_rows(rows, i, settings.shard_size)) for i in todo), settings) as bar:
        for i in todo:
            _write_shard(_shard_rows(rows, i, settings.shard_size), root, settings, out_dir, i, bar)
    if sum(pq.read_metadata(path).num_rows for path in paths) == 0:
        raise RuntimeError(f"{manifest}: no file could be read; reasons in {out_dir}/_failures-*.parquet")
    return paths


def extract_shard(manifest: Path, root: Path, settings: ExtractSettings, out_dir: Path, shard: int) -> Path:
    """Extract shard number `shard` of `manifest` into `out_dir` (overwriting it) and return its path."""
    rows = read_manifest(manifest)
    count = shard_count(len(rows), settings.shard_size)
    if not 0 <= shard < count:
        raise IndexError(
            f"{manifest}: shard {shard} out of range; it has {count} shard(s) of {settings.shard_size}"
        )
    _claim(Path(out_dir), _identity(manifest, settings))
    selected = _shard_rows(rows, shard, settings.shard_size)
    with _progress(len(selected), settings) as bar:
        return _write_shard(selected, Path(root), settings, Path(out_dir), shard, bar)


def read_extracted(out_dir: Path) -> tuple[pa.Table, pa.Table]:
    """All feature rows (MEDIA_FEATURES) and all failures (EXTRACTION_FAILURES) of an output folder."""
    out_dir = Path(out_dir)
    features = [
        catalog.read_table(p, catalog.MEDIA_FEATURES) for p in sorted(out_dir.glob("shard-*.parquet"))
    ]
    failures = [
        catalog.read_table(p, catalog.EXTRACTION_FAILURES)
        for p in sorted(out_dir.glob("_failures-*.parquet"))
    ]
    return (
        pa.concat_tables(features) if features else catalog.MEDIA_FEATURES.empty_table(),
        pa.concat_tables(failures) if failures else catalog.EXTRACTION_FAILURES.empty_table(),
    )


def _identity(manifest: Path, settings: ExtractSettings) -> dict[str, Any]:
    """What determines the shards' content: the manifest's bytes and the settings that pick features."""
    return {
        "manifest_sha256": hashlib.sha256(Path(manifest).read_bytes()).hexdigest(),
        "encoders": {VIDEO: settings.image.name, AUDIO: settings.audio.name},
        **{
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k in ("image", "audio", "modalities", "frames", "shard_size")
        },
    }


def _claim(out_dir: Path, identity: dict[str, Any]) -> None:
    """Record `identity` in `out_dir`, refusing a folder that holds shards of another manifest or settings."""
    record = out_dir / "_extraction.json"
    identity = json.loads(json.dumps(identity))  # tuples as lists, as read back
    if record.exists() and json.loads(record.read_text()) != identity:
        raise ValueError(
            f"{out_dir} holds features of another manifest or other settings ({record}); use a new folder"
        )
    catalog.write_json(identity, record)


def _progress(samples: int, settings: ExtractSettings) -> tqdm:
    """A progress bar counting (sample, modality) items."""
    return tqdm(
        total=samples * len(settings.modalities), desc="extract", unit="item",
        disable=None if settings.progress else True,  # None: off when stderr is not a terminal
    )


def _shard_rows(rows: pd.DataFrame, shard: int, size: int) -> pd.DataFrame:
    return rows.iloc[shard * size : (shard + 1) * size]


def _device(settings: ExtractSettings) -> str:
    return settings.device or ("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class ModalityPipeline:
    """How one modality turns a file into an encoder input, and a batch of inputs into unit vectors."""

    load: Callable[[Path], Any]
    encode: Callable[[list[Any]], torch.Tensor]
    encoder: ImageEncoder | AudioEncoder


_BUILDING = threading.Lock()


def modality_pipeline(name: str, settings: ExtractSettings) -> ModalityPipeline:
    """The pipeline of modality `name` with the encoders `settings` name (built once per process).

    Shard tasks run in threads; building under a lock gives them one shared encoder, and keeps
    two seeded random initialisations from interleaving on torch's global RNG.
    """
    with _BUILDING:
        return _video(settings) if name == VIDEO else _audio(settings)


def _video(settings: ExtractSettings) -> ModalityPipeline:
    encoder = build_image_encoder(settings.image, _device(settings))
    frames = settings.frame_count

    def load(path: Path) -> torch.Tensor:
        return torch.stack([encoder.preprocess(image) for image in decode_frames(path, frames)])

    def encode(clips: list[torch.Tensor]) -> torch.Tensor:
        vectors = encoder.encode(torch.cat(clips))  # [B*frames, D], unit rows
        return F.normalize(vectors.view(len(clips), frames, -1).mean(dim=1), dim=-1)

    return ModalityPipeline(load, encode, encoder)


def _audio(settings: ExtractSettings) -> ModalityPipeline:
    encoder = build_audio_encoder(settings.audio, _device(settings))

    def load(path: Path) -> dict[str, torch.Tensor]:
        return encoder.prepare(decode_audio(path, encoder.sample_rate))

    return ModalityPipeline(load, encoder.encode, encoder)


def _attempt(load: Callable[[Path], Any], path: Path) -> tuple[Any, str | None]:
    """The loaded input of one file, or why it could not be read."""
    try:
        return load(path), None
    except Exception as e:  # noqa: BLE001 - any failure to decode a file is that file's failure
        return None, f"{type(e).__name__}: {e}"


def _loaded(
    load: Callable[[Path], Any], paths: list[Path], workers: int, ahead: int
) -> Iterator[tuple[Any, str | None]]:
    """`_attempt` on each path, in order, with up to `ahead` files decoding in threads meanwhile."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future] = deque()
        for path in paths:
            pending.append(pool.submit(_attempt, load, path))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _encode_rows(
    rows: pd.DataFrame,
    root: Path,
    name: str,
    modality: ModalityPipeline,
    settings: ExtractSettings,
    bar: tqdm,
) -> tuple[pa.Table, list[dict[str, str]]]:
    """The feature rows of one modality for `rows`, and the files that failed."""
    paths = [root / p for p in rows["path"]]
    kept: list[int] = []
    vectors: list[np.ndarray] = []
    failures: list[dict[str, str]] = []
    batch: list[Any] = []

    def flush() -> None:
        if batch:
            vectors.append(modality.encode(batch).cpu().numpy().astype(np.float32))
            batch.clear()

    for i, (item, reason) in enumerate(
        _loaded(modality.load, paths, settings.workers, 2 * settings.batch_size)
    ):
        bar.update(1)
        if reason is not None:
            failures.append(
                {
                    "sample_id": rows["sample_id"].iat[i],
                    "path": rows["path"].iat[i],
                    "modality": name,
                    "reason": reason,
                }
            )
            continue
        kept.append(i)
        batch.append(item)
        if len(batch) == settings.batch_size:
            flush()
    flush()
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
    done = rows.iloc[kept]
    table = pa.table(
        {
            "sample_id": done["sample_id"].tolist(),
            "class_name": done["class_name"].tolist(),
            "modality": [name] * len(done),
            "vector": catalog.vector_column(matrix),
            "split": pa.array(done["split"].tolist(), pa.string()),
            "encoder": [modality.encoder.name] * len(done),
            "encoder_version": [modality.encoder.version] * len(done),
        }
    )
    return table, failures


def _write_shard(
    rows: pd.DataFrame, root: Path, settings: ExtractSettings, out_dir: Path, shard: int, bar: tqdm
) -> Path:
    """Encode `rows` in every modality; write the failures, then the shard file that marks it done."""
    tables, failures = [], []
    for name in settings.modalities:
        modality = modality_pipeline(name, settings)
        table, failed = _encode_rows(rows, root, name, modality, settings, bar)
        tables.append(table.cast(catalog.MEDIA_FEATURES))
        failures += failed
    failed_table = pa.Table.from_pylist(failures, schema=catalog.EXTRACTION_FAILURES)
    catalog.write_table(failed_table, failures_path(out_dir, shard), catalog.EXTRACTION_FAILURES)
    return catalog.write_table(pa.concat_tables(tables), shard_path(out_dir, shard), catalog.MEDIA_FEATURES)


# The extraction stage (its Prefect wrappers are in tasks/stages.py).


def extraction_dir(workspace: str | Path, key: str) -> Path:
    return catalog.stage_dir(Path(workspace), "extract") / key


def build_extraction(workspace: Path, key: str, manifest: str, media_root: str, settings: dict[str, Any]) -> None:
    """Extraction stage: media files -> Parquet shards in `extract/<key>/`.

    The flow first maps `extract_shard_task` over the missing shards (`extraction_plan`), so
    this normally finds every shard written and only checks them; shards it finds missing
    are extracted here, one after the other. `_complete.json` marks the end.
    """
    folder = extraction_dir(workspace, key)
    shards = extract_features(Path(manifest), Path(media_root), ExtractSettings.from_flat(settings), folder)
    catalog.write_json({"manifest": manifest, "settings": settings, "shards": [p.name for p in shards]},
                       folder / "_complete.json")


def all_shards_present(workspace: Path, key: str) -> bool:
    """A deleted shard makes the extraction incomplete, so only that shard is extracted again."""
    folder = extraction_dir(workspace, key)
    listed = json.loads((folder / "_complete.json").read_text())["shards"]
    return all((folder / name).exists() for name in listed)


def build_extraction_shard(
    workspace: Path, key: str, manifest: str, media_root: str, settings: dict[str, Any], shard: int
) -> Path:
    """One shard of the extraction `key`; a shard already written (by a rerun, a retry) is kept as it is."""
    folder = extraction_dir(workspace, key)
    path = shard_path(folder, shard)
    if path.exists():
        return path
    return extract_shard(Path(manifest), Path(media_root), ExtractSettings.from_flat(settings), folder, shard)
