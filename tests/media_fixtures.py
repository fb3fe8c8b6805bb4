"""Tiny real media files and tiny encoder configurations for extraction tests and benchmarks.

Clips are written with PyAV (mpeg4 video, AAC audio in mp4; PCM in wav), so the
extraction stage reads them through exactly the decoder it uses on real datasets.
The encoder configurations are the libraries' own JSON formats, shrunk so that a
randomly initialised model runs in well under a second on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

# open_clip architecture: a 2-layer ViT on 64x64 images, 32-d embeddings.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}

# laion_clap architecture: HTSAT-tiny's audio front end (48 kHz, 10 s, 64 mel bins) with
# the Swin body cut to one block per stage and 16 channels (`htsat` overrides).
TINY_CLAP = {
    "embed_dim": 128,
    "joint_embed_shape": 32,
    "audio_cfg": {
        "audio_length": 1024,
        "clip_samples": 480000,
        "mel_bins": 64,
        "sample_rate": 48000,
        "window_size": 1024,
        "hop_size": 480,
        "fmin": 50,
        "fmax": 14000,
        "class_num": 527,
        "model_type": "HTSAT",
        "model_name": "tiny",
    },
    "htsat": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8]},
}


def write_config(config: dict, path: Path) -> Path:
    """Write an encoder configuration as JSON; the file stem becomes the architecture name."""
    path.write_text(json.dumps(config))
    return path


def _tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_clip(
    path: Path,
    seed: int,
    seconds: float = 1.0,
    fps: int = 8,
    size: int = 64,
    audio_rate: int | None = 16000,
) -> Path:
    """An mp4 whose frames and tone depend on `seed`; `audio_rate=None` leaves out the audio track."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        for i in range(int(seconds * fps)):
            image = np.roll(base, shift=4 * i, axis=1)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode(None))
        if audio is not None:
            samples = _tone(seconds, audio_rate, 220.0 * (1 + seed))
            for start in range(0, len(samples), 1024):
                frame = av.AudioFrame.from_ndarray(
                    samples[None, start : start + 1024], format="fltp", layout="mono"
                )
                frame.sample_rate = audio_rate
                frame.pts = start
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path


def write_wav(path: Path, seed: int, seconds: float = 1.0, rate: int = 22050) -> Path:
    """A 16-bit PCM wav holding a tone that depends on `seed`."""
    samples = (_tone(seconds, rate, 330.0 * (1 + seed)) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path
