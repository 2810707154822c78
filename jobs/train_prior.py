"""Train the offline text-to-image prior (a small latent diffusion pipeline in diffusers' format) in Ray Train.

    python jobs/train_prior.py --config configs/prior/default.yaml [--out kka_ray/render/offline_prior]
"""

import json
import time
from pathlib import Path

from kka_ray.cli import parse_config, parser
from kka_ray.config import save_config
from kka_ray.prior.model import PriorConfig
from kka_ray.prior.train import train_prior
from kka_ray.records import invoked_command, machine
from kka_ray.render.prior import PRIOR_DIR
from kka_ray.runtime import init_ray


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default=str(PRIOR_DIR), help="pipeline folder to write")
    p.add_argument("--workdir", default="runs/prior", help="Ray Train storage for checkpoints")
    args = p.parse_args()
    cfg = parse_config(PriorConfig, args)
    init_ray(cfg.ray)
    start = time.time()
    out = train_prior(cfg, Path(args.out), Path(args.workdir))
    save_config(cfg, out / "kka_prior_config.yaml")
    (out / "kka_prior_training.json").write_text(json.dumps({
        "command": invoked_command(), "train_minutes": (time.time() - start) / 60, "machine": machine(),
        "vae_steps": cfg.vae_steps, "unet_steps": cfg.unet_steps}, indent=2) + "\n")
    print(f"prior saved to {out}")


if __name__ == "__main__":
    main()
