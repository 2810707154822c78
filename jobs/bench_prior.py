"""Measure the offline prior: judge accuracy on class prompts and unseen paraphrases, render throughput through
the Ray pool against a bare loop, and a grid of renders. Writes docs/results/prior.json (+ .md, .png).

    python jobs/bench_prior.py [--prior kka_ray/render/offline_prior] [--set steps=25]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from kka_ray.config import load_config
from kka_ray.prior.bench import (
    class_prompts,
    grid,
    judge_for,
    paraphrase_prompts,
    render_bare,
    render_pool,
    render_table,
)
from kka_ray.prior.corpus import build_corpus
from kka_ray.prior.judge import predict
from kka_ray.prior.model import PriorConfig
from kka_ray.records import invoked_command, write_record
from kka_ray.render import RenderConfig
from kka_ray.render.prior import PRIOR_DIR
from kka_ray.runtime import init_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default=str(PRIOR_DIR), help="the prior's pipeline folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="render config override")
    p.add_argument("--per-prompt", type=int, default=16, help="renders per prompt")
    p.add_argument("--judge-epochs", type=int, default=3)
    p.add_argument("--record", default="prior")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()
    prior = Path(args.prior)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    render = load_config(RenderConfig, None, [f"model={prior}", "scheduler=DDPMScheduler", *args.overrides])
    cfg = load_config(PriorConfig, prior / "kka_prior_config.yaml")
    training = json.loads((prior / "kka_prior_training.json").read_text())
    init_ray(cfg.ray)

    corpus = build_corpus(cfg.corpus)
    judge, judge_acc = judge_for(corpus, [d for d in cfg.corpus.datasets if d not in cfg.corpus.exclude],
                                 args.judge_epochs)
    size = cfg.corpus.image_size
    metrics = {"judge_test_accuracy": judge_acc, "train_minutes": training["train_minutes"],
               "weights_mb": sum(f.stat().st_size for part in ("unet", "vae")
                                 for f in (prior / part).glob("*.safetensors")) / 2**20}
    pages = []
    for kind, prompts in (("class_prompt", class_prompts(corpus.class_names)),
                          ("paraphrase", paraphrase_prompts(corpus.class_names))):
        table = render_table(prompts, args.per_prompt)
        images, stats = render_pool(table, render, size)
        labels = np.array(table.column("label").to_pylist())
        metrics[f"{kind}_accuracy"] = float((predict(judge, images) == labels).mean())
        if kind == "class_prompt":
            metrics["images_per_s"] = stats["images_per_s"]
            _, bare = render_bare(table, render, size)
            metrics["bare_images_per_s"] = bare
            metrics["ray_overhead_ratio"] = stats["images_per_s"] / bare
        png = Path(args.out) / f"{args.record}-{kind}.png"
        grid(images[:: max(1, args.per_prompt // 8)], [t for t, _ in prompts], min(8, args.per_prompt), png)
        pages.append(f"## {kind.replace('_', ' ')}s\n\n![{kind}]({png.name})\n")
    command = invoked_command()
    md = "\n".join([
        "# Offline text-to-image prior", "", f"Command: `{command}`", "",
        f"Trained by `{training['command']}` in {training['train_minutes']:.1f} min on {training['machine']}.", "",
        "| metric | value |", "|---|---|", *[f"| {k} | {v:.3f} |" for k, v in metrics.items()], "",
        "Accuracy = share of renders that the judge (a CNN trained on the corpus's real training images) assigns "
        "to the class the prompt names; paraphrases are wordings that never occur in the training captions.", "",
        *pages])
    write_record(args.record, metrics, md, args.out, command=command, extra={"render": render.model_dump()})
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
