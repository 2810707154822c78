"""Train an offline text-to-image prior (a small latent diffusion pipeline in diffusers' format) in Ray Train.

    python jobs/train_prior.py --config configs/prior/general.yaml [--out kka_ray/render/priors/general]

The pipeline is written to a temporary folder beside --out and renamed into place when complete, with its config,
its training record and its corpus (`kka_prior_corpus.json`: datasets, images, concepts, licences). An existing
prior at --out (a committed one) is refused unless --replace.
"""

import json
import shutil
import sys
import time
from pathlib import Path

from kka_ray.cli import parse_config, parser
from kka_ray.config import save_config
from kka_ray.prior.model import PriorConfig
from kka_ray.prior.train import train_prior
from kka_ray.records import git_commit, invoked_command, machine
from kka_ray.render.prior import CORPUS_FILE, PRIORS_DIR
from kka_ray.runtime import init_ray


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0], PriorConfig)
    p.add_argument("--out", default=None, help="pipeline folder to write (default: kka_ray/render/priors/<config "
                   "file name>)")
    p.add_argument("--workdir", default="runs/prior", help="Ray Train storage for checkpoints")
    p.add_argument("--replace", action="store_true", help="replace an existing prior at --out once the new one is "
                   "complete (without it, an existing folder is refused before any training)")
    args = p.parse_args(argv)
    cfg = parse_config(PriorConfig, args)
    out = Path(args.out or PRIORS_DIR / Path(args.config or "general").stem)
    if out.exists() and not args.replace:
        sys.exit(f"error: {out} already holds a prior (the committed one?); write elsewhere with --out, or pass "
                 "--replace to swap it in once the new one is complete")
    init_ray(cfg.ray)
    start = time.time()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _, corpus = train_prior(cfg, partial, Path(args.workdir))
    save_config(cfg, partial / "kka_prior_config.yaml")
    (partial / CORPUS_FILE).write_text(json.dumps(corpus, indent=2) + "\n")
    (partial / "kka_prior_training.json").write_text(json.dumps({
        "command": invoked_command(), "commit": git_commit(), "train_minutes": (time.time() - start) / 60,
        "machine": machine(), "vae_steps": cfg.vae_steps, "unet_steps": cfg.unet_steps}, indent=2) + "\n")
    if out.exists():  # --replace: the old prior goes only once the new one is complete
        shutil.rmtree(out)
    partial.rename(out)
    print(f"prior saved to {out}")
