"""Decoding of media files with PyAV: video frames as images, audio as a mono waveform.

PyAV wraps FFmpeg, so one reader covers every container the datasets use (mp4, avi,
mkv, webm, wav, mp3, flac, ...), and resampling happens in FFmpeg rather than in a
second library. Every failure to read a file becomes a `MediaError` whose message is
the reason recorded in the extraction failures table.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image


class MediaError(Exception):
    """A media file that cannot give what was asked for (no stream, no frames, unreadable)."""


def frame_indices(count: int, frames: int) -> list[int]:
    """Indices of `frames` evenly spaced frames out of `count`: the centres of equal segments.

    With one frame this is `count // 2`, the middle frame ClipClap-GZSL encodes.
    """
    return [int((k + 0.5) * count / frames) for k in range(frames)]


def _video_frame_count(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The number of frames from the header, or by counting packets when the header has none."""
    if stream.frames > 0:
        return stream.frames
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def decode_frames(path: Path, frames: int = 1) -> list[Image.Image]:
    """`frames` evenly spaced RGB frames of the first video stream of `path`.

    Frames are decoded in order and only the chosen ones converted, so memory stays at
    one frame whatever the clip length. If the header overstates the frame count, the
    last decoded frame stands in for the missing ones.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    with _reading(path) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        wanted = frame_indices(_video_frame_count(container, stream), frames)
        picked: list[Image.Image] = []
        last = None
        for index, frame in enumerate(container.decode(stream)):
            last = frame
            while len(picked) < len(wanted) and wanted[len(picked)] == index:
                picked.append(frame.to_image())
            if len(picked) == len(wanted):
                break
        if last is None:
            raise MediaError("video stream has no decodable frames")
        while len(picked) < len(wanted):
            picked.append(last.to_image())
    return picked


def decode_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of `path` as mono float32 samples in [-1, 1] at `sample_rate`."""
    with _reading(path) as container:
        if not container.streams.audio:
            raise MediaError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise MediaError("audio stream has no samples")
    return np.concatenate(chunks).astype(np.float32, copy=False)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[av.container.InputContainer]:
    """Open a media file; FFmpeg errors while opening or decoding become `MediaError`."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError("empty file")
    try:
        with av.open(str(path)) as container:
            yield container
    except av.FFmpegError as e:
        raise MediaError(f"unreadable media ({e})") from e
