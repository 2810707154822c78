"""The offline prior as a Stable Diffusion pipeline in miniature: a small AutoencoderKL (32 px grey <-> 4x8x8
latents), a small UNet2DConditionModel cross-attending to the token states of the offline MiniLM encoder, and a
DDPM scheduler. Saved with save_pretrained, it loads through the same DiffusionPipeline path as any hub model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from pydantic import Field
from transformers import AutoTokenizer, BertModel

from kka_ray.config import RayConfig, Strict
from kka_ray.precision import BF16_DESCRIPTION, Bf16
from kka_ray.prior.corpus import CorpusConfig
from kka_ray.text.encoder import offline_model_dir

TEXT_WEIGHTS = "model.safetensors"


class PriorConfig(Strict):
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    vae_channels: list[int] = Field(default_factory=lambda: [16, 32, 32],
                                    description="AutoencoderKL widths; n levels downsample by 2^(n-1)")
    latent_channels: int = Field(4, ge=1)
    unet_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], description="UNet widths per level")
    attention_head_dim: int = Field(8, ge=1)
    text_max_length: int = Field(24, ge=4, description="Tokens of a prompt (captions and LM lines are short)")
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    train_timesteps: int = Field(1000, ge=10)
    cond_dropout: float = Field(0.1, ge=0, lt=1, description="Share of empty prompts: classifier-free guidance")
    vae_steps: int = Field(800, ge=0)
    vae_lr: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-5, ge=0, description="KL weight: small, latents stay near-deterministic")
    unet_steps: int = Field(6000, ge=0)
    unet_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(200, ge=0)
    batch_size: int = Field(64, ge=1, description="Per worker")
    ema_decay: float = Field(0.999, gt=0, lt=1)
    bf16: Bf16 = Field("auto", description=BF16_DESCRIPTION + " (fp32 is faster for these GroupNorm-heavy "
                       "nets on CPUs, bf16 on GPUs)")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP); one single-threaded worker per core "
                             "avoids the OpenMP stalls that two threads on these small ops showed")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)


def build_vae(cfg: PriorConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=cfg.latent_channels, block_out_channels=tuple(cfg.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=min(32, cfg.vae_channels[0]), sample_size=cfg.corpus.image_size,
    )


def latent_size(cfg: PriorConfig) -> int:
    return cfg.corpus.image_size // 2 ** (len(cfg.vae_channels) - 1)


def build_unet(cfg: PriorConfig, text_dim: int) -> UNet2DConditionModel:
    n = len(cfg.unet_channels)
    # Cross-attention only below the top level, where the latent grid is coarse and attention is cheap.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        sample_size=latent_size(cfg), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=1, down_block_types=down,
        up_block_types=up, cross_attention_dim=text_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=min(32, cfg.unet_channels[0]),
    )


def build_scheduler(cfg: PriorConfig) -> DDPMScheduler:
    # Latents are unbounded: no x0 clipping (the clipping a pixel-space DDPM carries broke DDIM sampling here).
    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type=cfg.prediction_type, clip_sample=False)


def text_components(cfg: PriorConfig, path: str | None = None):
    """MiniLM tokenizer (padding to text_max_length, as the pipeline pads) and encoder (attention mask on)."""
    path = path or offline_model_dir()
    tok = AutoTokenizer.from_pretrained(path, model_max_length=cfg.text_max_length)
    text = BertModel.from_pretrained(path)
    text.config.use_attention_mask = True  # StableDiffusionPipeline passes the mask only when this is set
    return tok, text.requires_grad_(False).eval()


def assemble(vae, unet, scheduler, tok, text) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_prior(pipe: StableDiffusionPipeline, out: Path) -> Path:
    """save_pretrained, then swap the 90 MB frozen text-encoder weights for a link to the offline package's copy:
    the trained part (UNet, VAE) stays small enough to commit."""
    pipe.save_pretrained(out)
    link_text_encoder(out)
    return out


def link_text_encoder(out: Path) -> None:
    target = Path(offline_model_dir()) / TEXT_WEIGHTS
    weights = Path(out) / "text_encoder" / TEXT_WEIGHTS
    if weights.is_symlink() and weights.resolve() == target.resolve():
        return
    weights.unlink(missing_ok=True)
    os.symlink(target, weights)
