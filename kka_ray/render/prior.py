"""The project's self-trained offline text-to-image priors (diffusers pipeline folders), and which one a task may use.

Like Stable Diffusion for users, the prior that renders a task's anomalies must not have seen the task's dataset:
each prior records its corpus (`kka_prior_corpus.json`), and a prior whose corpus holds the task's dataset is
refused unless the run says it is the in-domain control (`render.allow_prior_overlap`).
"""

from __future__ import annotations

import json
from pathlib import Path

from kka_ray.config import ConfigError

PRIORS_DIR = Path(__file__).parent / "priors"
CORPUS_FILE = "kka_prior_corpus.json"
# `auto` takes the first of these whose corpus does not hold the task's dataset.
GENERAL = ("general", "general-no-mnist")


def shipped_prior(name: str) -> Path:
    """The folder of a shipped prior, or an error naming it and what is shipped."""
    path = PRIORS_DIR / name
    if not (path / "model_index.json").is_file():
        shipped = sorted(p.name for p in PRIORS_DIR.iterdir() if (p / "model_index.json").is_file())
        raise FileNotFoundError(
            f"render.prior {name!r}: no offline prior at {path} (shipped: {', '.join(shipped) or 'none'}); train it "
            f"with `python jobs/train_prior.py --config configs/prior/{name}.yaml` or set render.model to a "
            "diffusers pipeline (hub id or local folder)")
    return path


def prior_dir(name: str) -> Path:
    """A shipped prior by name; its frozen MiniLM weights are linked from the offline package on first use."""
    path = shipped_prior(name)
    from kka_ray.prior.model import link_text_encoder

    link_text_encoder(path)
    return path


def prior_corpus(path: Path) -> dict | None:
    """The corpus a prior folder was trained on, or None for a pipeline that does not say (a hub model)."""
    file = Path(path) / CORPUS_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def choose_prior(name: str, dataset: str, allow_overlap: bool) -> str:
    """The shipped prior for a task on `dataset`; an error names the prior, the dataset and the way out."""
    if name == "auto":
        seen = {}
        for candidate in GENERAL:
            corpus = prior_corpus(PRIORS_DIR / candidate)
            if corpus is not None and dataset not in corpus["datasets"]:
                return candidate
            seen[candidate] = "not trained" if corpus is None else f"has seen {dataset}"
        raise ConfigError(f"render.prior auto: no general prior can render for {dataset!r} ("
                          + "; ".join(f"{k}: {v}" for k, v in seen.items()) + "); train one with "
                          "jobs/train_prior.py, or name a prior and set render.allow_prior_overlap: true")
    check_overlap(f"render.prior {name!r}", prior_corpus(shipped_prior(name)), dataset, allow_overlap)
    return name


def check_overlap(what: str, corpus: dict | None, dataset: str, allow_overlap: bool) -> None:
    if corpus is not None and dataset in corpus["datasets"] and not allow_overlap:
        raise ConfigError(
            f"{what} was trained on {dataset!r} (its corpus: {', '.join(corpus['datasets'])}), the dataset this "
            "task evaluates: its renders would copy the test anomaly classes. Use render.prior: auto (a general "
            "prior that has not seen it), or set render.allow_prior_overlap: true to run the in-domain control")
