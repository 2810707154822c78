"""SSD's contrastive training as a Ray Train loop (DDP across workers), its weights, and the feature actor."""

from __future__ import annotations

import math
from pathlib import Path

import ray
import torch
from torch.utils.data import DataLoader, TensorDataset

from kka_ray.ddp import Progress, all_reduce_sum, unwrap
from kka_ray.detectors import weights
from kka_ray.detectors.backbone import build_backbone, to_input
from kka_ray.detectors.ssd.model import ContrastiveNet, nt_xent, views

WEIGHTS_FILE = "ssd.safetensors"
FORMAT = "kka-ssd-1"


def build_net(cfg, pretrained: bool | None = None) -> ContrastiveNet:
    backbone_cfg = cfg.backbone if pretrained is None else cfg.backbone.model_copy(update={"pretrained": pretrained})
    backbone = build_backbone(backbone_cfg)
    return ContrastiveNet(backbone, sum(backbone.channels()), cfg.proj_dim)


def lr_at(step: int, steps: int, warmup: int, lr: float, final: float = 1e-4) -> float:
    """Linear warm-up, then cosine decay to `final` (SSD's schedule, per step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * progress))


def to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,3,size,size) in [0, 1], before the views and the backbone's normalisation."""
    return to_input(images, size, lambda x: x)


def fit_net(data: dict, cfg, seed: int, *, prepare_model=lambda m: m, prepare_loader=lambda d: d,
            rank: int = 0) -> tuple[ContrastiveNet, dict]:
    normals = data["normals"]
    torch.manual_seed(seed)
    net = build_net(cfg)
    size = cfg.backbone.image_size
    gen = torch.Generator().manual_seed(seed)
    aug = torch.Generator().manual_seed(seed * 1009 + rank)
    loader = prepare_loader(DataLoader(TensorDataset(torch.from_numpy(normals)), batch_size=cfg.batch_size,
                                       shuffle=True, drop_last=len(normals) > cfg.batch_size, generator=gen))
    model = prepare_model(net)
    inner = unwrap(model)
    device = next(inner.parameters()).device
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    steps, warmup = cfg.epochs * len(loader), cfg.warmup_epochs * len(loader)
    curve, step, progress = [], 0, Progress("ssd epoch", cfg.epochs)
    model.train()
    for epoch in range(cfg.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total = torch.zeros(2)
        for (batch,) in loader:
            x = to_unit(batch.cpu(), size)
            pair = torch.cat([views(x, aug), views(x, aug)])
            z = model(inner.backbone.normalise(pair).to(device))
            loss = nt_xent(z.float(), cfg.temperature)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, warmup, cfg.lr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item(), 1.0])
            step += 1
        all_reduce_sum(total)
        curve.append(float(total[0] / total[1]))
        progress(epoch, curve[-1])
    return inner.eval(), {"loss": curve[-1], "loss_curve": curve, "epochs": cfg.epochs}


def save(folder: Path, net: ContrastiveNet) -> Path:
    return weights.write(Path(folder) / WEIGHTS_FILE, net.state_dict(), FORMAT, {})


def load(folder: str | Path, cfg) -> ContrastiveNet:
    tensors, _ = weights.read(Path(folder) / WEIGHTS_FILE, FORMAT)
    net = build_net(cfg, pretrained=False)  # every weight comes from the file
    net.load_state_dict(tensors)
    return net.eval()


class SSDFeatures:
    """Ray Data actor: the trained encoder's pooled features h of each image, or of one random view of it when
    `view_seed` is set (SSD_k embeds the few given anomalies under the training views)."""

    def __init__(self, checkpoint: ray.train.Checkpoint, cfg, view_seed: int | None = None, threads: int = 1):
        torch.set_num_threads(threads)
        with checkpoint.as_directory() as folder:
            self.net = load(folder, cfg)
        self.size = cfg.backbone.image_size
        self.gen = None if view_seed is None else torch.Generator().manual_seed(view_seed)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        x = to_unit(torch.tensor(batch["image"]), self.size)
        if self.gen is not None:
            self.gen.manual_seed(int(batch["row"][0]))  # the same views whichever actor gets the batch
            x = views(x, self.gen)
        h = self.net.features(self.net.backbone.normalise(x))
        return {"row": batch["row"], "feature": h.numpy()}
