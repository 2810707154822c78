"""Where the project's self-trained offline text-to-image prior lives (a diffusers pipeline folder)."""

from __future__ import annotations

from pathlib import Path

PRIOR_DIR = Path(__file__).parent / "offline_prior"


def offline_prior_dir() -> Path:
    """The committed prior; its frozen MiniLM weights are linked from the offline package on first use."""
    if not (PRIOR_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the offline text-to-image prior is not at {PRIOR_DIR}: train it with `python jobs/train_prior.py` "
            "or set render.model to a diffusers pipeline (hub id or local folder)")
    from kka_ray.prior.model import link_text_encoder

    link_text_encoder(PRIOR_DIR)
    return PRIOR_DIR
