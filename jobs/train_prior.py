"""Train an offline text-to-image prior (a small latent diffusion pipeline in diffusers' format) in Ray Train.

Entry point for `python jobs/train_prior.py` and `ray job submit -- python jobs/train_prior.py`; the code and its
options: kka_ray/commands/train_prior.py (`--help`).
"""

from kka_ray.commands.train_prior import main

if __name__ == "__main__":
    main()
