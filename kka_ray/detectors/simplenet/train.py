"""SimpleNet's training as a Ray Train loop (DDP across workers) over cached patch features, and its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from kka_ray.ddp import Progress, all_reduce_sum, unwrap
from kka_ray.detectors import weights
from kka_ray.detectors.simplenet.model import SimpleNetHead, feature_stats, simplenet_loss

WEIGHTS_FILE = "simplenet.safetensors"
FORMAT = "kka-simplenet-2"  # 2: the standardisation buffers


def image_scores(head: SimpleNetHead, f: np.ndarray | torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Image scores of (N, P, D) patch features: the largest patch score, in eval mode."""
    f = torch.as_tensor(f)
    device = next(head.parameters()).device
    return torch.cat([head.patch_scores(f[i:i + batch].float().reshape(-1, f.shape[2]).to(device))
                      .view(-1, f.shape[1]).amax(1).cpu() for i in range(0, len(f), batch)])


def separation(head: SimpleNetHead, monitor: dict) -> float:
    """AUROC of monitor anomalies against monitor normals (validation images, never test labels)."""
    from sklearn.metrics import roc_auc_score

    was_training = head.training
    scores = image_scores(head.eval(), np.concatenate([monitor["normals"], monitor["anomalies"]])).numpy()
    head.train(was_training)
    return float(roc_auc_score(np.r_[np.zeros(len(monitor["normals"])), np.ones(len(monitor["anomalies"]))],
                               scores))


def fit_head(data: dict, cfg, seed: int, *, prepare_model=lambda m: m, prepare_loader=lambda d: d,
             rank: int = 0) -> tuple[SimpleNetHead, dict]:
    """Adaptor and discriminator on data's (N, P, D) normal and (M, P, D) anomaly patch features (M may be 0):
    Adam for D, AdamW for G, fresh Gaussian fakes every step, `cfg.batch_size` images per step. data's optional
    `monitor` ({"normals", "anomalies"} patch features): their separation after every epoch, for training
    curves."""
    normals, anomalies, monitor = data["normals"], data["anomalies"], data.get("monitor")
    torch.manual_seed(seed)
    dim = normals.shape[2]
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed * 1009 + rank)  # each worker draws its own fakes
    loader = prepare_loader(DataLoader(TensorDataset(torch.from_numpy(normals)), batch_size=cfg.batch_size,
                                       shuffle=True, generator=gen))
    fresh = SimpleNetHead(dim, cfg.hidden)
    fresh.mean, fresh.std = feature_stats(torch.from_numpy(normals))  # every worker holds all the normals
    model = prepare_model(fresh)
    head = unwrap(model)
    device = next(head.parameters()).device
    opt_d = torch.optim.Adam(head.discriminator.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt_g = torch.optim.AdamW(head.adaptor.parameters(), lr=cfg.adaptor_lr, weight_decay=cfg.adaptor_weight_decay)
    bank = torch.from_numpy(anomalies)
    curve, watched, progress = [], [], Progress("simplenet epoch", cfg.epochs)
    for epoch in range(cfg.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        total = torch.zeros(2)
        for (batch,) in loader:
            f = batch.float().reshape(-1, dim).to(device)
            noise = (torch.randn(f.shape, generator=noise_gen) * cfg.noise_std).to(device)
            picked = bank[torch.randint(len(bank), (len(batch),), generator=noise_gen)] if len(bank) else bank
            fa = picked.float().reshape(-1, dim).to(device)
            loss = simplenet_loss(model(f, noise, fa), len(f), cfg.threshold, cfg.anomaly_weight)
            opt_d.zero_grad()
            opt_g.zero_grad()
            loss.backward()
            opt_d.step()
            opt_g.step()
            total += torch.tensor([loss.item() * len(batch), len(batch)])
        all_reduce_sum(total)
        curve.append(float(total[0] / total[1]))
        if monitor is not None:
            watched.append(separation(head, monitor))
        progress(epoch, curve[-1])
    return head.eval(), {"loss": curve[-1], "loss_curve": curve, "monitor_curve": watched, "epochs": cfg.epochs}


def save(folder: Path, head: SimpleNetHead) -> Path:
    meta = {"dim": head.adaptor.in_features, "hidden": head.discriminator[0].out_features}
    return weights.write(Path(folder) / WEIGHTS_FILE, head.state_dict(), FORMAT, meta)


def load(folder: str | Path) -> SimpleNetHead:
    tensors, meta = weights.read(Path(folder) / WEIGHTS_FILE, FORMAT)
    head = SimpleNetHead(meta["dim"], meta["hidden"])
    head.load_state_dict(tensors)
    return head.eval()
