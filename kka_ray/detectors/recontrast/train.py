"""ReContrast's training as a Ray Train loop (DDP across workers) over images, its weights, and the scoring
actor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import ray
import torch
from torch.utils.data import DataLoader, TensorDataset

from kka_ray.ddp import Progress, all_reduce_sum, unwrap
from kka_ray.detectors import weights
from kka_ray.detectors.backbone import build_backbone, to_input
from kka_ray.detectors.recontrast.model import ReContrastNet, alpha_at, anomaly_scores, recontrast_loss

WEIGHTS_FILE = "recontrast.safetensors"
FORMAT = "kka-recontrast-1"


def build_net(cfg) -> ReContrastNet:
    """E from the config's backbone (ImageNet or random init); the bottleneck sized from E's levels."""
    encoder = build_backbone(cfg.backbone)
    size = cfg.backbone.image_size
    with torch.no_grad():
        levels = encoder.eval()(torch.zeros(1, 3, size, size))
    sides = [m.shape[-1] for m in levels]
    steps = [max(0, round(math.log2(s / sides[-1]))) for s in sides]
    return ReContrastNet(encoder, [m.shape[1] for m in levels], steps, cfg.bottleneck,
                         encoder_bn_train=not cfg.backbone.pretrained)


@torch.no_grad()
def calibrate_bn(net: ReContrastNet, images: np.ndarray, size: int, batch: int) -> None:
    """A random-init E has no meaningful batch-norm statistics: one pass over the normals sets them (cumulative
    averages), and E_f is copied from E afterwards so both start equal."""
    enc = net.encoder
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    enc.train()
    for i in range(0, len(images), batch):
        enc(to_input(images[i:i + batch], size, enc.normalise))
    net.frozen.load_state_dict(enc.state_dict())


def fit_net(data: dict, cfg, seed: int, *, prepare_model=lambda m: m, prepare_loader=lambda d: d,
            rank: int = 0) -> tuple[ReContrastNet, dict]:
    """`cfg.steps` AdamW steps (decoder and bottleneck at `lr`, E at `encoder_lr`) on uint8 normals, each step
    with `batch_size` normals and, when anomalies are given, half as many anomalies drawn with replacement."""
    normals, anomalies = data["normals"], data["anomalies"]
    torch.manual_seed(seed)
    net = build_net(cfg)
    size = cfg.backbone.image_size
    if not cfg.backbone.pretrained and cfg.calibrate_bn:
        calibrate_bn(net, normals, size, cfg.batch_size)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.Generator().manual_seed(seed * 1009 + rank)
    loader = prepare_loader(DataLoader(TensorDataset(torch.from_numpy(normals)), batch_size=cfg.batch_size,
                                       shuffle=True, drop_last=len(normals) > cfg.batch_size, generator=gen))
    model = prepare_model(net)
    inner = unwrap(model)
    device = next(inner.parameters()).device
    opt = torch.optim.AdamW([
        {"params": [*inner.bottleneck.parameters(), *inner.decoder.parameters()], "lr": cfg.lr},
        {"params": inner.encoder.parameters(), "lr": cfg.encoder_lr},
    ], betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    bank = torch.from_numpy(anomalies)
    n_anomaly = max(1, cfg.batch_size // 2) if len(bank) else 0
    curve, step, epoch, total = [], 0, 0, torch.zeros(2)
    progress = Progress("recontrast step", cfg.steps)
    model.train()
    while step < cfg.steps:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for (batch,) in loader:
            images = batch.cpu()
            if n_anomaly:
                images = torch.cat([images, bank[torch.randint(len(bank), (n_anomaly,), generator=pick)]])
            x = to_input(images, size, inner.encoder.normalise).to(device)
            loss, _ = recontrast_loss(*model(x), len(batch), alpha=alpha_at(step, cfg.steps), factor=cfg.shrink,
                                      margin=cfg.anomaly_margin, anomaly_weight=cfg.anomaly_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item(), 1.0])
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                all_reduce_sum(total)
                curve.append(float(total[0] / total[1]))
                progress(step - 1, curve[-1])
                total = torch.zeros(2)
            if step == cfg.steps:
                break
        epoch += 1
    return inner.eval(), {"loss": curve[-1], "loss_curve": curve, "steps": cfg.steps}


def save(folder: Path, net: ReContrastNet) -> Path:
    return weights.write(Path(folder) / WEIGHTS_FILE, net.state_dict(), FORMAT, {})


def load(folder: str | Path, cfg) -> ReContrastNet:
    tensors, _ = weights.read(Path(folder) / WEIGHTS_FILE, FORMAT)
    # every weight comes from the file: no need to read the ImageNet weights first
    net = build_net(cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"pretrained": False})}))
    net.load_state_dict(tensors)
    return net.eval()


class ReContrastScorer:
    """Ray Data actor: loads the fitted weights once, returns each image's anomaly score."""

    def __init__(self, checkpoint: ray.train.Checkpoint, cfg, threads: int = 1):
        torch.set_num_threads(threads)
        with checkpoint.as_directory() as folder:
            self.net = load(folder, cfg)
        self.size = cfg.backbone.image_size
        self.sigma = cfg.blur_sigma * self.size / 256

    def __call__(self, batch: dict) -> dict:
        x = to_input(torch.tensor(batch["image"]), self.size, self.net.encoder.normalise)
        return {"row": batch["row"], "score": anomaly_scores(self.net, x, self.sigma).double().numpy()}
