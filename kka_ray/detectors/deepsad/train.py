"""Deep SAD training as a Ray Train `TorchTrainer` loop (DDP across workers) and checkpoint scoring."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from kka_ray.config import DeepSADConfig
from kka_ray.ddp import Progress, all_reduce_sum, unwrap, worker_threads
from kka_ray.detectors.deepsad import checkpoint as ckpt
from kka_ray.detectors.deepsad.loss import deep_sad_loss, fix_center, squared_distance
from kka_ray.detectors.deepsad.networks import AutoEncoder, Encoder, NetSpec
from kka_ray.precision import resolve_bf16
from kka_ray.resources import peak_rss_mb
from kka_ray.tracking import fit_run


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,C) -> float (N,C,H,W) in [0,1], the reference's ToTensor()."""
    return torch.tensor(images).permute(0, 3, 1, 2).float().div_(255.0)  # a copy: inputs may be read-only


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    # DistributedSampler only reshuffles per epoch when told the epoch.
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def _autocast(cfg: DeepSADConfig, x: torch.Tensor):
    # cfg.bf16 is resolved to a bool per device by the worker (kka_ray/precision.py); losses stay fp32.
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bool(cfg.bf16))


RESTART_FILE = "restart.pt"  # a fit's state at an epoch boundary: tensors and numbers, read with weights_only


def _fit_epochs(model: torch.nn.Module, loader: DataLoader, gen: torch.Generator, batch_loss, cfg: DeepSADConfig, *,
                lr: float, weight_decay: float, milestones: list[int], epochs: int, label: str,
                resume: dict | None = None, save=None) -> tuple[float, float]:
    """The reference's optimisation for both phases: Adam, lr x 0.1 at each milestone. `batch_loss(output, x,
    semi_targets)` is the phase's loss; returns the last epoch's mean loss over all workers and the mean
    seconds per epoch. `resume` continues from a saved epoch boundary; `save(state)` is called every
    cfg.checkpoint_every epochs with all that decides the rest (weights, optimiser, schedule, random streams),
    so a resumed fit equals an undisturbed one."""
    start = time.time()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    first, loss = 0, float("nan")
    if resume is not None:
        unwrap(model).load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        gen.set_state(resume["gen"])
        torch.set_rng_state(resume["rng"])
        first, loss = resume["epoch"], resume["loss"]
    progress = Progress(label, epochs)
    for epoch in range(first, epochs):
        _set_epoch(loader, epoch)
        total = torch.zeros(2)
        for x, t in loader:
            with _autocast(cfg, x):
                out = model(x)
            batch = batch_loss(out, x, t)
            opt.zero_grad()
            batch.backward()
            opt.step()
            total += torch.tensor([batch.item() * len(x), len(x)])
        sched.step()
        all_reduce_sum(total)
        loss = float(total[0] / total[1])
        progress(epoch, loss)
        done = epoch + 1
        if save is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < epochs:
            save({"epoch": done, "loss": loss, "model": unwrap(model).state_dict(), "opt": opt.state_dict(),
                  "sched": sched.state_dict(), "gen": gen.get_state(), "rng": torch.get_rng_state()})
    return loss, (time.time() - start) / max(1, epochs - first)


def _identity(x):
    return x


@dataclass
class Fitted:
    net: Encoder
    c: torch.Tensor
    pretrained: dict | None  # encoder weights after the autoencoder phase (this fit's or the one it started from)
    metrics: dict


def fit_deep_sad(data: dict, spec: NetSpec, cfg: DeepSADConfig, seed: int, pretrained: dict | None = None, *,
                 prepare_model=_identity, prepare_loader=_identity, resume: dict | None = None,
                 save=None) -> Fitted:
    """Both phases on `data` (images, semi_targets); cfg.bf16 must be resolved. Ray Train's worker passes its
    prepare_model / prepare_data_loader (DDP, sharding); the identities give the bare loop the perf benchmark
    compares it with. `resume` / `save`: restart checkpoints (a `phase` of "ae" or "sad" and its state)."""
    torch.manual_seed(seed)
    dataset = TensorDataset(to_tensor(data["images"]), torch.tensor(data["semi_targets"]))
    gen = torch.Generator().manual_seed(seed)
    loader = prepare_loader(DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen))
    metrics = {"epochs": cfg.epochs, "bf16": float(cfg.bf16)}
    phase = resume["phase"] if resume else None
    encoder = Encoder(spec)
    if phase == "sad":  # the autoencoder phase had finished
        pretrained = resume["pretrained"]
        metrics.update(resume["metrics"])
    elif pretrained is None and cfg.pretrain and cfg.ae_epochs:
        ae = prepare_model(AutoEncoder(spec))
        _, metrics["ae_epoch_seconds"] = _fit_epochs(
            ae, loader, gen, lambda recon, x, _: F.mse_loss(recon.float(), x), cfg, lr=cfg.ae_lr,
            weight_decay=cfg.ae_weight_decay, milestones=cfg.ae_lr_milestones, epochs=cfg.ae_epochs,
            label="deepsad pretrain epoch", resume=resume, save=save and (lambda st: save({"phase": "ae", **st})))
        pretrained = unwrap(ae).encoder.state_dict()
    if pretrained is not None:
        encoder.load_state_dict(pretrained)
    net = prepare_model(encoder)
    c = resume["c"] if phase == "sad" else _center(net, loader)

    def sad_loss(z: torch.Tensor, _, semi_targets: torch.Tensor) -> torch.Tensor:
        return deep_sad_loss(squared_distance(z.float(), c), semi_targets, cfg.eta, cfg.eps)

    def save_sad(state: dict) -> None:
        save({"phase": "sad", "c": c, "pretrained": pretrained, "metrics": dict(metrics), **state})

    metrics["loss"], metrics["epoch_seconds"] = _fit_epochs(
        net, loader, gen, sad_loss, cfg, lr=cfg.lr, weight_decay=cfg.weight_decay, milestones=cfg.lr_milestones,
        epochs=cfg.epochs, label="deepsad train epoch", resume=resume if phase == "sad" else None,
        save=save and save_sad)
    return Fitted(unwrap(net), c, pretrained, metrics)


def resolved(cfg: DeepSADConfig, device: str) -> DeepSADConfig:
    """The config with `bf16: auto` decided for this device (kka_ray/precision.py)."""
    return cfg.model_copy(update={"bf16": resolve_bf16("deepsad", cfg.bf16, device)})


@torch.no_grad()
def _center(net: torch.nn.Module, loader: DataLoader, eps: float = 0.1) -> torch.Tensor:
    """c = mean embedding of an initial forward pass over this worker's shard, averaged over workers."""
    net.eval()
    acc = None
    for x, _ in loader:
        z = net(x)
        part = torch.cat([z.sum(0), torch.tensor([len(z)], dtype=z.dtype)])
        acc = part if acc is None else acc + part
    acc = all_reduce_sum(acc)
    net.train()
    return fix_center(acc[:-1] / acc[-1], eps)


def train_loop_per_worker(config: dict) -> None:
    cfg = resolved(DeepSADConfig(**config["cfg"]), ray.train.torch.get_device().type)
    torch.set_num_threads(worker_threads(cfg))
    with fit_run(config):
        fitted = fit_deep_sad(ray.get(config["data"]), NetSpec(**config["spec"]), cfg, config["seed"],
                              _pretrained_encoder(config.get("pretrained")),
                              prepare_model=ray.train.torch.prepare_model,
                              prepare_loader=ray.train.torch.prepare_data_loader,
                              resume=_restart_state(), save=_report_restart)
    _report_final({**fitted.metrics, "peak_rss_mb": peak_rss_mb()}, fitted.net, fitted.c,
                  NetSpec(**config["spec"]), fitted.pretrained)


def _pretrained_encoder(checkpoint: ray.train.Checkpoint | None) -> dict | None:
    """The encoder weights after autoencoder pretraining that an earlier fit saved, if one is given."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        state = ckpt.read(path)
    if state.get("pretrained") is None:
        raise ValueError(f"Deep SAD checkpoint {checkpoint.path}: it holds no pretrained encoder (fitted with "
                         "pretrain off); fit the source with autoencoder pretraining")
    return state["pretrained"]


def _restart_state() -> dict | None:
    """The state a restarted worker continues from: Ray Train hands back the last reported checkpoint."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        file = Path(path) / RESTART_FILE
        return torch.load(file, map_location="cpu", weights_only=True) if file.is_file() else None


def _report_restart(state: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            torch.save(state, Path(tmp) / RESTART_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"phase": state["phase"], "epoch": state["epoch"]}, checkpoint=checkpoint)


def _report_final(metrics: dict, net: torch.nn.Module, c: torch.Tensor, spec: NetSpec,
                  pretrained: dict | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            ckpt.write(tmp, net.state_dict(), c, spec, pretrained)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def load_checkpoint(path: str | Path) -> tuple[Encoder, torch.Tensor]:
    state = ckpt.read(path)
    net = Encoder(NetSpec(**state["spec"]))
    net.load_state_dict(state["state_dict"])
    return net.eval(), state["c"]


class DeepSADScorer:
    """Ray Data actor: loads a checkpoint once, returns each row's squared distance to c."""

    def __init__(self, checkpoint: ray.train.Checkpoint, threads: int = 1):
        torch.set_num_threads(threads)
        with checkpoint.as_directory() as path:  # local path, or a download from remote storage
            self.net, self.c = load_checkpoint(path)

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
        z = self.net(to_tensor(batch["image"]))
        return {"row": batch["row"], "score": squared_distance(z, self.c).numpy()}
