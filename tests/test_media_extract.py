"""Extraction from real media files (written with PyAV) through tiny random CLIP and CLAP encoders."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from media_fixtures import TINY_CLAP, TINY_CLIP, write_clip, write_config, write_wav
from tasks.store import catalog
from tasks.ingest.extract import (
    ExtractSettings,
    extract_features,
    extract_shard,
    read_extracted,
    read_manifest,
    shard_path,
)
from tasks.ingest.media import frame_indices
from tasks.encoders.media_encoders import (
    AudioEncoder,
    AudioEncoderSpec,
    ClapAudioTower,
    ImageEncoderSpec,
    WeightsUnavailableError,
    build_audio_encoder,
    build_image_encoder,
)
from tasks.encoders.text_encoders import build_text_encoder

# sample_id, class_name, file, split; c5 has no audio track, w has no video.
ROWS = [
    *[(f"c{i}", f"class{i % 3}", f"clips/c{i}.mp4", "train" if i < 4 else "test") for i in range(6)],
    ("w", "class0", "sounds/w.wav", ""),
    ("e", "class1", "clips/empty.mp4", ""),
    ("b", "class2", "clips/corrupt.mp4", "test"),
]
EXPECTED_FAILURES = {
    ("w", "video"): "no video stream",
    ("c5", "audio"): "no audio stream",
    ("e", "video"): "empty file",
    ("e", "audio"): "empty file",
    ("b", "video"): "unreadable media",
    ("b", "audio"): "unreadable media",
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("media")
    root = base / "root"
    (root / "clips").mkdir(parents=True)
    (root / "sounds").mkdir()
    for i in range(6):
        write_clip(root / f"clips/c{i}.mp4", seed=i, audio_rate=None if i == 5 else 16000)
    write_wav(root / "sounds/w.wav", seed=7)
    (root / "clips/empty.mp4").write_bytes(b"")
    (root / "clips/corrupt.mp4").write_bytes(b"\x00\x01 not a video " * 64)
    manifest = base / "manifest.csv"
    pd.DataFrame(ROWS, columns=["sample_id", "class_name", "path", "split"]).to_csv(manifest, index=False)
    return {
        "base": base,
        "root": root,
        "manifest": manifest,
        "clip": write_config(TINY_CLIP, base / "tiny-vit.json"),
        "clap": write_config(TINY_CLAP, base / "tiny-htsat.json"),
    }


def tiny_settings(media: dict[str, Path], **changes) -> ExtractSettings:
    fields = {
        "image": ImageEncoderSpec(str(media["clip"]), None),
        "audio": AudioEncoderSpec(str(media["clap"]), None),
        "shard_size": 4,
        "batch_size": 3,
        "progress": False,
    }
    return ExtractSettings(**{**fields, **changes})


@pytest.fixture(scope="module")
def extracted(media: dict[str, Path]) -> Path:
    out = media["base"] / "out"
    extract_features(media["manifest"], media["root"], tiny_settings(media), out)
    return out


def test_shards_hold_normalised_features_of_every_readable_file(
    media: dict[str, Path], extracted: Path
) -> None:
    shards = sorted(extracted.glob("shard-*.parquet"))
    assert [p.name for p in shards] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert all(pq.read_schema(p).equals(catalog.MEDIA_FEATURES, check_metadata=False) for p in shards)
    features, failures = read_extracted(extracted)
    frame = features.to_pandas()
    expected = {(s, m) for s, *_ in ROWS for m in ("video", "audio")} - set(EXPECTED_FAILURES)
    assert set(zip(frame["sample_id"], frame["modality"])) == expected
    vectors = {m: np.stack(frame.loc[frame["modality"] == m, "vector"]) for m in ("video", "audio")}
    assert vectors["video"].shape == (6, TINY_CLIP["embed_dim"])
    assert vectors["audio"].shape == (6, TINY_CLAP["joint_embed_shape"])
    for matrix in vectors.values():
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
        assert len(np.unique(matrix.round(5), axis=0)) == len(matrix)  # different clips, different vectors
    by_key = frame.set_index(["sample_id", "modality"])
    assert by_key.loc[("c0", "video"), "encoder"] == "open_clip:tiny-vit:random"
    assert by_key.loc[("c0", "audio"), "encoder"] == "laion_clap:tiny-htsat:random"
    assert by_key.loc[("c4", "video"), "split"] == "test"
    assert pd.isna(by_key.loc[("w", "audio"), "split"])
    reasons = {(r["sample_id"], r["modality"]): r["reason"] for r in failures.to_pylist()}
    assert reasons.keys() == EXPECTED_FAILURES.keys()
    assert all(EXPECTED_FAILURES[key] in reason for key, reason in reasons.items())
    assert catalog.read_table(extracted).num_rows == len(frame)  # the folder reads as a features folder


def test_two_runs_give_identical_features(media: dict[str, Path], extracted: Path, tmp_path: Path) -> None:
    reference = read_extracted(extracted)[0]
    extract_features(media["manifest"], media["root"], tiny_settings(media), tmp_path / "same")
    assert read_extracted(tmp_path / "same")[0].equals(reference)
    # Other batching and decoding threads: the same rows, vectors equal up to float rounding.
    extract_features(
        media["manifest"], media["root"], tiny_settings(media, batch_size=2, workers=1), tmp_path / "other"
    )
    other = read_extracted(tmp_path / "other")[0]
    assert other.drop_columns("vector").equals(reference.drop_columns("vector"))
    np.testing.assert_allclose(
        np.stack(other.column("vector").to_pylist()),
        np.stack(reference.column("vector").to_pylist()),
        atol=1e-5,
    )


def test_rerun_recomputes_only_missing_shards(
    media: dict[str, Path], extracted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(extracted, out)
    shard_path(out, 1).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    paths = extract_features(media["manifest"], media["root"], tiny_settings(media), out)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert paths == [shard_path(out, i) for i in range(3)]
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"shard-00001.parquet", "_failures-00001.parquet"}
    assert catalog.read_table(shard_path(out, 1)).equals(catalog.read_table(shard_path(extracted, 1)))
    with pytest.raises(ValueError, match="holds features of another manifest or other settings"):
        extract_features(media["manifest"], media["root"], tiny_settings(media, frames=2), out)


def test_several_frames_are_mean_pooled(media: dict[str, Path], extracted: Path, tmp_path: Path) -> None:
    assert frame_indices(8, 1) == [4] and frame_indices(8, 4) == [1, 3, 5, 7]
    path = extract_shard(
        media["manifest"], media["root"], tiny_settings(media, frames=3, modalities=("video",)), tmp_path, 0
    )
    pooled = np.stack(catalog.read_table(path).column("vector").to_pylist())
    middle = np.stack(
        catalog.read_table(shard_path(extracted, 0)).to_pandas().query("modality == 'video'")["vector"]
    )
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
    assert pooled.shape == middle.shape and not np.allclose(pooled, middle)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sample_id,class_name\na,x\n", r"manifest\.csv: missing column\(s\) \['path'\]"),
        ("sample_id,class_name,path\na,x,a.mp4\nb,x,\n", r"manifest\.csv: row 2 \(line 3\): empty 'path'"),
        (
            "sample_id,class_name,path\na,x,a.mp4\na,y,b.mp4\n",
            r"row 2 \(line 3\): sample_id 'a' is already on row 1",
        ),
        ("sample_id,class_name,path,split\na,x,a.mp4,val\n", r"row 1 \(line 2\): split 'val' is not"),
        ("sample_id,class_name,path\n", r"manifest\.csv: the manifest has no rows"),
    ],
)
def test_bad_manifest_names_file_and_row(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "manifest.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / "manifest.csv")


def test_missing_manifest_or_wrong_root_is_a_clear_error(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest .*nope.csv does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(
        FileNotFoundError, match=r"none of its 9 paths exists under .* \(row 1: 'clips/c0.mp4'\)"
    ):
        extract_features(media["manifest"], tmp_path, tiny_settings(media), tmp_path / "out")


def test_pretrained_weights_missing_offline_fail_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(
        WeightsUnavailableError,
        match=r"'openai' for ViT-B-32 is not in the local cache.*--clip-checkpoint PATH",
    ):
        build_image_encoder(ImageEncoderSpec("ViT-B-32", "openai"))
    with pytest.raises(WeightsUnavailableError, match=r"630k-audioset-best\.pt.*--clap-checkpoint PATH"):
        build_audio_encoder(AudioEncoderSpec("HTSAT-tiny", "630k-audioset-best.pt"))
    with pytest.raises(WeightsUnavailableError, match="--clip-checkpoint PATH"):
        build_text_encoder("clip:ViT-B-32:laion2b_s34b_b79k")
    assert time.monotonic() - start < 10


def test_checkpoint_files_load_into_the_encoders(media: dict[str, Path], tmp_path: Path) -> None:
    """Weights saved as CLAP / open_clip checkpoints come back: outputs match the saved model, not the seed."""
    images = torch.rand(2, 3, 64, 64)
    seeded_image = build_image_encoder(ImageEncoderSpec(str(media["clip"]), None))
    clip = seeded_image.visual
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in clip.state_dict().items()}
    full = {f"visual.{k}": v for k, v in trained.items()}
    text = build_text_encoder(f"clip:{media['clip']}:random")._model.state_dict()
    torch.save(
        {"state_dict": {**{k: v for k, v in text.items() if not k.startswith("visual.")}, **full}},
        tmp_path / "clip.pt",
    )
    loaded_image = build_image_encoder(ImageEncoderSpec(str(media["clip"]), str(tmp_path / "clip.pt")))
    clip.load_state_dict(trained)
    try:
        np.testing.assert_allclose(loaded_image.encode(images), seeded_image.encode(images), atol=1e-5)
    finally:
        build_image_encoder.cache_clear()  # the seeded encoder was modified in place

    waves = [np.random.default_rng(i).uniform(-0.5, 0.5, 30000).astype(np.float32) for i in range(2)]
    seeded = build_audio_encoder(AudioEncoderSpec(str(media["clap"]), None))
    tower = ClapAudioTower(TINY_CLAP, enable_fusion=False)
    weights = {f"module.{k}": v for k, v in tower.state_dict().items()}
    torch.save(
        {"epoch": 3, "state_dict": {**weights, "module.text_branch.weight": torch.zeros(1)}},
        tmp_path / "clap.pt",
    )
    loaded = AudioEncoder(AudioEncoderSpec(str(media["clap"]), str(tmp_path / "clap.pt")))
    assert loaded.name == "laion_clap:tiny-htsat:clap.pt"
    inputs = [loaded.prepare(w) for w in waves]
    expected = torch.nn.functional.normalize(
        tower.eval()({k: torch.stack([i[k] for i in inputs]) for k in inputs[0]}), dim=-1
    )
    np.testing.assert_allclose(loaded.encode(inputs), expected.detach(), atol=1e-5)
    assert not np.allclose(seeded.encode(inputs), expected.detach(), atol=1e-3)
    with pytest.raises(
        ValueError, match=r"clap\.pt: not a checkpoint of .*tiny-htsat\.json with enable_fusion=True"
    ):
        AudioEncoder(AudioEncoderSpec(str(media["clap"]), str(tmp_path / "clap.pt"), enable_fusion=True))


def test_audio_is_fitted_to_ten_seconds_like_laion_clap(media: dict[str, Path]) -> None:
    encoder = build_audio_encoder(AudioEncoderSpec(str(media["clap"]), None))
    short = np.linspace(-1, 1, 200_000, dtype=np.float32)
    item = encoder.prepare(short)
    assert item["waveform"].shape == (480_000,) and not item["longer"]
    np.testing.assert_array_equal(item["waveform"][200_000:400_000], item["waveform"][:200_000])  # repeated
    assert item["waveform"][400_000:].abs().max() == 0  # then zero-padded
    long = np.arange(600_000, dtype=np.float32) / 600_000
    cropped = encoder.prepare(long)["waveform"]
    assert abs(float(cropped[0]) - 60_000 / 600_000) < 1e-4  # the centre 10 s
    fusion = AudioEncoder(AudioEncoderSpec(str(media["clap"]), None, enable_fusion=True))
    fused = fusion.prepare(long)
    assert fused["mel_fusion"].shape == (4, 1001, 64) and fused["longer"]
    vectors = fusion.encode([fused, fusion.prepare(short)])
    np.testing.assert_allclose(vectors.norm(dim=-1), 1.0, rtol=1e-5)


def test_clip_text_encoder_gives_unit_vectors_in_the_image_space(media: dict[str, Path]) -> None:
    encoder = build_text_encoder(f"clip:{media['clip']}:random")
    vectors = encoder.encode(
        ["a person applying eye makeup", "a dog barking", "a person applying eye makeup"]
    )
    assert vectors.shape == (3, TINY_CLIP["embed_dim"]) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
