"""Training the offline prior in Ray Train: the autoencoder first, then the UNet on its latents.

Each worker samples its own share of the corpus (DDP averages the gradients); rank 0 saves the pipeline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from kka_ray.ddp import Progress, mean_over_workers, unwrap
from kka_ray.precision import resolve_bf16
from kka_ray.prior.corpus import Corpus, build_corpus, corpus_summary
from kka_ray.prior.model import (
    PriorConfig,
    assemble,
    build_scheduler,
    build_unet,
    build_vae,
    save_prior,
    text_components,
)
from kka_ray.runtime import trainer_cls

PIPELINE_DIR = "pipeline"


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,1) -> float (N,1,H,W) in [-1, 1], the range the pipeline's image processor uses."""
    return torch.tensor(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


class _AutoencoderStep(torch.nn.Module):
    """One autoencoder pass as a forward(), so DDP sees it and syncs the gradients across workers."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl().mean()


def _batches(n: int, cfg: PriorConfig, rng: np.random.Generator):
    """This worker's share of the corpus, drawn with replacement-free shuffles."""
    ctx = ray.train.get_context()
    own = np.arange(ctx.get_world_rank(), n, ctx.get_world_size())
    while True:
        perm = rng.permutation(own)
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            yield np.sort(perm[i:i + cfg.batch_size])


def train_vae(corpus: Corpus, cfg: PriorConfig, device, rng) -> tuple[torch.nn.Module, float]:
    """Reconstruction + a small KL term; returns the autoencoder and its latent scaling factor (1 / std)."""
    step_fn = ray.train.torch.prepare_model(_AutoencoderStep(build_vae(cfg)))
    opt = torch.optim.AdamW(step_fn.parameters(), lr=cfg.vae_lr)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, max(1, cfg.vae_steps))
    progress, batches = Progress("prior autoencoder step", cfg.vae_steps), _batches(len(corpus.images), cfg, rng)
    for step in range(cfg.vae_steps):
        x = to_model_range(corpus.images[next(batches)]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            recon, kl = step_fn(x)
        loss = F.mse_loss(recon.float(), x) + cfg.vae_kl_weight * kl.float()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        progress(step, loss.item())
    vae = unwrap(step_fn).vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = to_model_range(corpus.images[next(batches)]).to(device)
        std = mean_over_workers(vae.encode(sample).latent_dist.mean.float().std().reshape(1))
    return vae, float(1.0 / std.clamp(min=1e-6))


@torch.no_grad()
def encode_latents(vae, corpus: Corpus, device, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every corpus image, once: the UNet phase then samples latents for free."""
    means, stds = [], []
    for i in range(0, len(corpus.images), batch):
        dist = vae.encode(to_model_range(corpus.images[i:i + batch]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


def train_unet(corpus: Corpus, cfg: PriorConfig, vae, scaling: float, device, rng) -> torch.nn.Module:
    tok, text = text_components(cfg)
    text = text.to(device)
    scheduler = build_scheduler(cfg)
    unet = build_unet(cfg, text.config.hidden_size)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    # The pipeline's own encode_prompt makes training see exactly the text states that rendering will.
    text_pipe = assemble(vae, unet, scheduler, tok, text)
    unet = ray.train.torch.prepare_model(unet)
    mean, std = encode_latents(vae, corpus, device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, max(1, cfg.unet_steps))
    progress, batches = Progress("prior unet step", cfg.unet_steps), _batches(len(corpus.images), cfg, rng)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for step in range(cfg.unet_steps):
        idx = next(batches)
        captions = [c if rng.random() >= cfg.cond_dropout else "" for c in corpus.captions(idx, rng)]
        with torch.no_grad():
            states = text_pipe.encode_prompt(captions, device, 1, False)[0]
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)).to(device) * scaling
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, cfg.train_timesteps, (len(idx),), generator=gen).to(device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = unet(noisy, t, states).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.step(unwrap(unet).parameters())
        progress(step, loss.item())
    unet = unwrap(unet)
    ema.copy_to(unet.parameters())
    return unet.eval()


def train_loop_per_worker(config: dict) -> None:
    cfg = PriorConfig(**config["cfg"])
    torch.manual_seed(cfg.seed)
    rank = ray.train.get_context().get_world_rank()
    rng = np.random.default_rng([cfg.seed, rank])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    cfg = cfg.model_copy(update={"bf16": resolve_bf16("prior", cfg.bf16, device.type)})
    corpus = ray.get(config["corpus"])
    vae, scaling = train_vae(corpus, cfg, device, rng)
    vae.register_to_config(scaling_factor=scaling)
    unet = train_unet(corpus, cfg, vae, scaling, device, rng)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            tok, text = text_components(cfg)
            assemble(vae.cpu(), unet.cpu(), build_scheduler(cfg), tok, text).save_pretrained(Path(tmp) / PIPELINE_DIR)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"scaling_factor": scaling}, checkpoint=checkpoint)


def train_prior(cfg: PriorConfig, out: Path, workdir: Path) -> tuple[Path, dict]:
    """Train in Ray Train and write the pipeline to `out` (text-encoder weights linked, not copied); returns it
    with the corpus's summary."""
    from diffusers import StableDiffusionPipeline
    from ray.train import RunConfig, ScalingConfig
    
    corpus = build_corpus(cfg.corpus)
    trainer = trainer_cls()(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "corpus": ray.put(corpus)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="prior", storage_path=str(Path(workdir).resolve())),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as ckpt:
        pipe = StableDiffusionPipeline.from_pretrained(Path(ckpt) / PIPELINE_DIR)
        return save_prior(pipe, Path(out)), corpus_summary(corpus)
