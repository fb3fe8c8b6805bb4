"""The encoders of the paper's features: CLIP's image tower (open_clip) and CLAP's audio branch (laion_clap).

Encoders are configuration (`ImageEncoderSpec`, `AudioEncoderSpec`); their `name` goes
into every output row. Weights come only from local files: a pretrained tag must
already be in the local cache, otherwise building fails at once with one message
saying how to provide the file. Nothing here downloads, so an offline machine never
waits on network retries. `pretrained=None` / `checkpoint=None` give seeded random
weights, which only tests and benchmarks ask for.

laion_clap is used for its audio modules only. Importing the `laion_clap` package runs
its training data module, which builds three Hugging Face tokenizers at import time
(a hub lookup), and `CLAP_Module` builds a RoBERTa text branch we never use. So the
audio branch modules (`htsat.py`, `pann_model.py`) are imported from laion_clap's
source folder under a private package name, and only the audio branch plus its
projection head are built; their attribute names match CLAP checkpoint keys, so the
published checkpoints load into them unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import math
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# Before open_clip imports huggingface_hub: cache lookups must never turn into downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RANDOM = "random"  # how encoder names mark randomly initialised weights
CLAP_CHECKPOINT_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
CLAP_HUB_REPO = "lukewys/laion_clap"
_CLAP_PACKAGE = "_laion_clap_audio"


class WeightsUnavailableError(RuntimeError):
    """The weights an encoder spec names are not on this machine; the message says how to provide them."""


@dataclass(frozen=True)
class ImageEncoderSpec:
    """An open_clip image tower.

    model: an open_clip architecture name (`open_clip.list_models()`), or the path of an
        open_clip JSON model config (its file stem becomes the architecture name).
    pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k", ...) found in
        the local cache, a checkpoint file path, or None for seeded random weights.
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"

    @property
    def name(self) -> str:
        return f"open_clip:{architecture_name(self.model)}:{self.pretrained or RANDOM}"


@dataclass(frozen=True)
class AudioEncoderSpec:
    """A laion_clap audio branch.

    amodel: a laion_clap audio config name ("HTSAT-tiny", "HTSAT-base", "PANN-14", ...) or
        the path of a JSON file in laion_clap's config format; an optional `htsat` entry
        there overrides the Swin body (`embed_dim`, `depths`, `num_heads`).
    checkpoint: a CLAP checkpoint file path, a laion_clap release name
        ("630k-audioset-best.pt") already downloaded into laion_clap's folder or the
        Hugging Face cache, or None for seeded random weights.
    enable_fusion: the feature-fusion variant (needs a fusion checkpoint).
    """

    amodel: str = "HTSAT-tiny"
    checkpoint: str | None = "630k-audioset-best.pt"
    enable_fusion: bool = False

    @property
    def name(self) -> str:
        weights = Path(self.checkpoint).name if self.checkpoint else RANDOM
        fusion = "+fusion" if self.enable_fusion else ""
        return f"laion_clap:{architecture_name(self.amodel)}{fusion}:{weights}"


def architecture_name(model: str) -> str:
    """The architecture a model spec names: its JSON config file stem, or the name itself."""
    return Path(model).stem if model.endswith(".json") else model


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Random initialisation that is the same in every process, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- CLIP (open_clip)


def _register_clip_architecture(model: str) -> str:
    """The open_clip architecture name for `model`, registering a JSON config file first."""
    import open_clip

    name = architecture_name(model)
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {path} does not exist")
        open_clip.add_model_config(path)
        if name not in open_clip.list_models():
            raise ValueError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    elif name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {name!r}; see open_clip.list_models()")
    return name


def _cached_clip_weights(tag_cfg: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The local file of a pretrained tag, if cached, and where it can be downloaded from."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    sources = []
    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" names the default file
        filename = filename or HF_WEIGHTS_NAME
        safe = (
            HF_SAFE_WEIGHTS_NAME
            if filename == HF_WEIGHTS_NAME
            else filename.rsplit(".", 1)[0] + ".safetensors"
        )
        for name in (safe, filename):
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return cached, sources
        sources.append(f"`hf download {repo} {filename}`")
    if tag_cfg.get("url"):
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(tag_cfg["url"])
        if cached.is_file():
            return str(cached), sources
        sources.append(tag_cfg["url"])
    return None, sources


def _resolve_clip_weights(arch: str, pretrained: str) -> tuple[str, dict[str, Any]]:
    """The checkpoint file for `pretrained` (a path or a cached tag) and the tag's config.

    A file has no tag config, so nothing says its weights were trained with QuickGELU,
    except that OpenAI's own files are TorchScript archives; other OpenAI-trained files
    need the `-quickgelu` architecture (e.g. ViT-B-32-quickgelu).
    """
    import open_clip

    if Path(pretrained).is_file():
        return pretrained, {"quick_gelu": True} if _is_torchscript(pretrained) else {}
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag_cfg:
        raise ValueError(
            f"pretrained {pretrained!r} for {arch} is neither a file nor an open_clip tag; "
            f"tags: {open_clip.list_pretrained_tags_by_model(arch)}"
        )
    path, sources = _cached_clip_weights(tag_cfg)
    if path is None:
        model = f"{arch}-quickgelu" if tag_cfg.get("quick_gelu") and not arch.endswith("-quickgelu") else arch
        raise WeightsUnavailableError(
            f"pretrained tag {pretrained!r} for {arch} is not in the local cache and downloads are off; "
            f"download it ({' or '.join(sources)}) and pass the file with --clip-checkpoint PATH "
            f"(ImageEncoderSpec(model={model!r}, pretrained=PATH))"
        )
    return path, tag_cfg


def _is_torchscript(path: str) -> bool:
    """OpenAI's original CLIP files are TorchScript archives, which torch cannot load weights-only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def load_clip(
    model: str, pretrained: str | None, device: str = "cpu"
) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """An open_clip model in eval mode and the image transform its weights were trained with."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    arch = _register_clip_architecture(model)
    checkpoint, tag_cfg = _resolve_clip_weights(arch, pretrained) if pretrained else (None, {})
    with _seeded():
        clip = open_clip.create_model(
            arch,
            pretrained=checkpoint,
            device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg),
            weights_only=not (checkpoint and _is_torchscript(checkpoint)),  # OpenAI's files hold code
        )
    clip.eval()
    preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(clip)), is_train=False)
    return clip, preprocess


class ImageEncoder:
    """CLIP's image tower: preprocessed images in, L2-normalised embeddings out."""

    def __init__(self, spec: ImageEncoderSpec, device: str = "cpu") -> None:
        clip, self.preprocess = load_clip(spec.model, spec.pretrained, device)
        self.visual = clip.visual  # the text tower is not needed for image features
        self.name = spec.name
        self.version = version("open_clip_torch")
        self.device = device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] preprocessed images -> [B, D] float32 unit vectors (fp16 autocast on CUDA)."""
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.float16, enabled=self.device.startswith("cuda")),
        ):
            features = self.visual(images.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1)


@lru_cache(maxsize=4)
def build_image_encoder(spec: ImageEncoderSpec, device: str = "cpu") -> ImageEncoder:
    """Build (once per process) the image encoder `spec` names."""
    return ImageEncoder(spec, device)


# ---------------------------------------------------------------- CLAP (laion_clap)


@lru_cache(maxsize=1)
def _clap_source() -> Path:
    """laion_clap's `clap_module` folder, registered as a package whose __init__ never runs."""
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or spec.origin is None:
        raise ImportError("laion_clap is not installed (pip install laion-clap)")
    folder = Path(spec.origin).parent / "clap_module"
    package = importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec(_CLAP_PACKAGE, None, is_package=True)
    )
    package.__path__ = [str(folder)]
    sys.modules[_CLAP_PACKAGE] = package
    return folder


def _clap_module(name: str) -> ModuleType:
    _clap_source()
    return importlib.import_module(f"{_CLAP_PACKAGE}.{name}")


def _clap_config(amodel: str) -> dict[str, Any]:
    """A laion_clap model config (embed_dim, audio_cfg, ...) by name or JSON path."""
    path = Path(amodel) if amodel.endswith(".json") else _clap_source() / "model_configs" / f"{amodel}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (_clap_source() / "model_configs").glob("*.json"))
        raise ValueError(f"unknown laion_clap audio model {amodel!r}: no {path}; known: {known}")
    config = json.loads(path.read_text())
    missing = [key for key in ("embed_dim", "audio_cfg") if key not in config]
    if missing:
        raise ValueError(f"{path}: laion_clap config lacks {missing}")
    return config


def _clap_checkpoint(checkpoint: str) -> Path:
    """A CLAP checkpoint file: a path, or a release name found where laion_clap or the hub cache keep it."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    if path.name == checkpoint:
        from huggingface_hub import try_to_load_from_cache

        candidates = [_clap_source().parent / checkpoint, try_to_load_from_cache(CLAP_HUB_REPO, checkpoint)]
        for candidate in candidates:
            if isinstance(candidate, (str, Path)) and Path(candidate).is_file():
                return Path(candidate)
    raise WeightsUnavailableError(
        f"CLAP checkpoint {checkpoint!r} is not on this machine and downloads are off; download "
        f"{CLAP_CHECKPOINT_URL}{path.name} (or another laion_clap release) and pass the file with "
        f"--clap-checkpoint PATH (AudioEncoderSpec(checkpoint=PATH))"
    )


def _audio_branch(config: dict[str, Any], enable_fusion: bool) -> nn.Module:
    """laion_clap's HTSAT or PANN audio branch, optionally with a reduced Swin body."""
    audio_cfg = SimpleNamespace(**config["audio_cfg"])
    fusion_type = "aff_2d" if enable_fusion else "None"  # the fusion laion_clap's CLAP_Module uses
    if audio_cfg.model_type == "PANN":
        return _clap_module("pann_model").create_pann_model(audio_cfg, enable_fusion, fusion_type)
    if audio_cfg.model_type != "HTSAT":
        raise ValueError(f"laion_clap audio model_type {audio_cfg.model_type!r} is neither HTSAT nor PANN")
    htsat = _clap_module("htsat")
    if "htsat" not in config:
        return htsat.create_htsat_model(audio_cfg, enable_fusion, fusion_type)
    return htsat.HTSAT_Swin_Transformer(
        spec_size=256,
        patch_size=4,
        patch_stride=(4, 4),
        num_classes=audio_cfg.class_num,
        window_size=8,
        config=audio_cfg,
        enable_fusion=enable_fusion,
        fusion_type=fusion_type,
        **config["htsat"],
    )


class ClapAudioTower(nn.Module):
    """CLAP's audio branch and audio projection (paper: the CLAP audio encoder), nothing else.

    The attribute names are those of laion_clap's `CLAP` model, so checkpoint keys
    `audio_branch.*` and `audio_projection.*` load without renaming.
    """

    def __init__(self, config: dict[str, Any], enable_fusion: bool) -> None:
        super().__init__()
        joint = config.get("joint_embed_shape", 512)
        activation = nn.GELU() if config.get("mlp_act") == "gelu" else nn.ReLU()
        self.audio_branch = _audio_branch(config, enable_fusion)
        self.audio_projection = nn.Sequential(
            nn.Linear(config["embed_dim"], joint), activation, nn.Linear(joint, joint)
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = next(self.parameters()).device
        embedding = self.audio_branch(batch, mixup_lambda=None, device=device)["embedding"]
        return F.normalize(self.audio_projection(embedding), dim=-1)


def _load_clap_weights(tower: ClapAudioTower, path: Path, spec: AudioEncoderSpec) -> None:
    # laion_clap checkpoints carry training state besides tensors (epoch, optimizer: plain
    # values); weights_only refuses anything that would run code when unpickled.
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: holds Python objects besides tensors and plain values; refusing to unpickle "
                         "it (re-save its state_dict with torch.save, from a trusted copy)") from e
    state = checkpoint.get("state_dict", checkpoint)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    audio = {k: v for k, v in state.items() if k.startswith(("audio_branch.", "audio_projection."))}
    missing, unexpected = tower.load_state_dict(audio, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a checkpoint of {spec.amodel} with enable_fusion={spec.enable_fusion} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _htk_mel_filters(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """[n_freqs, n_mels] triangular HTK mel filters without area normalisation, as torchaudio's
    `melscale_fbanks(norm=None, mel_scale="htk")` that laion_clap's fusion input uses."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min, m_max = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    f_pts = 700.0 * (10 ** (torch.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


def _log_mel(waveform: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """[T] -> [frames, mel_bins] log-mel in dB: laion_clap's `get_mel` (torchaudio) in plain torch."""
    n_fft = cfg["window_size"]
    spectrum = (
        torch.stft(
            waveform,
            n_fft,
            hop_length=cfg["hop_size"],
            win_length=n_fft,
            window=torch.hann_window(n_fft),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        .abs()
        .pow(2)
    )  # [freqs, frames]
    filters = _htk_mel_filters(n_fft // 2 + 1, cfg["fmin"], cfg["fmax"], cfg["mel_bins"], cfg["sample_rate"])
    mel = filters.T @ spectrum
    return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).T


def _fusion_mel(waveform: torch.Tensor, cfg: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """The 4-channel fusion input of laion_clap's `get_audio_features` and its `longer` flag.

    A long clip gives its whole mel shrunk to one chunk plus three chunks from its front,
    middle and back thirds; laion_clap draws each chunk's start at random within its
    third, here it is the third's centre so that features are reproducible.
    """
    from torchvision.transforms.functional import resize

    max_len = cfg["clip_samples"]
    mel = _log_mel(waveform, cfg)
    chunk = max_len // cfg["hop_size"] + 1
    if len(waveform) <= max_len or mel.shape[0] == chunk:
        return mel.unsqueeze(0).repeat(4, 1, 1), False
    thirds = np.array_split(np.arange(mel.shape[0] - chunk + 1), 3)
    starts = [int(part[len(part) // 2]) if len(part) else 0 for part in thirds]
    shrunk = resize(mel[None], [chunk, cfg["mel_bins"]])[0]
    return torch.stack([shrunk, *(mel[s : s + chunk] for s in starts)]), True


class AudioEncoder:
    """CLAP's audio tower: mono waveforms at `sample_rate` in, L2-normalised embeddings out."""

    def __init__(self, spec: AudioEncoderSpec, device: str = "cpu") -> None:
        config = _clap_config(spec.amodel)
        checkpoint = _clap_checkpoint(spec.checkpoint) if spec.checkpoint else None
        with _seeded():
            self.tower = ClapAudioTower(config, spec.enable_fusion)
        if checkpoint is not None:
            _load_clap_weights(self.tower, checkpoint, spec)
        self.tower.eval().to(device)
        self.audio_cfg = config["audio_cfg"]
        self.sample_rate: int = self.audio_cfg["sample_rate"]
        self.clip_samples: int = self.audio_cfg["clip_samples"]
        self.enable_fusion = spec.enable_fusion
        self.name = spec.name
        self.version = version("laion_clap")
        self.device = device

    def prepare(self, waveform: np.ndarray) -> dict[str, torch.Tensor]:
        """One model input from a waveform, as laion_clap's `get_audio_embedding_from_data`.

        The waveform is quantised to int16 and back, as laion_clap does; a short clip is
        repeated then zero-padded to `clip_samples` (10 s at 48 kHz); a long one is cropped
        around its centre (laion_clap crops at random; ClipClap-GZSL also crops the centre).
        """
        quantised = (np.clip(waveform, -1.0, 1.0) * 32767.0).astype(np.int16)
        audio = torch.from_numpy(quantised.astype(np.float32) / 32767.0)
        item: dict[str, torch.Tensor] = {}
        longer = len(audio) > self.clip_samples
        if longer:
            start = (len(audio) - self.clip_samples) // 2
            fitted = audio[start : start + self.clip_samples]
        else:
            fitted = audio.repeat(self.clip_samples // len(audio))
            fitted = F.pad(fitted, (0, self.clip_samples - len(fitted)))
        if self.enable_fusion:
            item["mel_fusion"], longer = _fusion_mel(audio if longer else fitted, self.audio_cfg)
        item["waveform"] = fitted
        item["longer"] = torch.tensor([longer])
        return item

    def encode(self, items: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """A batch of `prepare` outputs -> [B, D] float32 unit vectors.

        Runs in float32 even on CUDA: the log-mel front end squares STFT magnitudes,
        which overflows float16.
        """
        batch = {key: torch.stack([item[key] for item in items]).to(self.device) for key in items[0]}
        with torch.inference_mode():
            return self.tower(batch).float()


@lru_cache(maxsize=4)
def build_audio_encoder(spec: AudioEncoderSpec, device: str = "cpu") -> AudioEncoder:
    """Build (once per process) the audio encoder `spec` names."""
    return AudioEncoder(spec, device)
