"""Measure an offline prior: judge accuracy on renders of class prompts of the grey dataset it saw and of the one it
never saw (zero-shot), of unseen paraphrases and of emoji concepts in unseen wordings; render throughput through the
Ray pool against a bare loop; grids. Writes docs/results/prior-<name>.json (+ .md, .png).

    python jobs/bench_prior.py --prior general [--set steps=25]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from kka_ray.config import load_config
from kka_ray.data.emoji import GROUPS
from kka_ray.prior.bench import (
    GREY,
    class_prompts,
    emoji_prompts,
    emoji_sample,
    grid,
    group_judge,
    judge_for,
    paraphrase_prompts,
    render_bare,
    render_pool,
    render_tables,
)
from kka_ray.prior.judge import predict
from kka_ray.prior.model import PriorConfig
from kka_ray.records import invoked_command, write_record
from kka_ray.render import RenderConfig
from kka_ray.render.prior import PRIORS_DIR, prior_corpus, prior_dir
from kka_ray.runtime import init_ray

GRID_GROUPS = ("mammal", "food", "vehicle", "clothing")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="general", help=f"a shipped prior ({PRIORS_DIR}/<name>) or a pipeline folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="render config override")
    p.add_argument("--per-prompt", type=int, default=16, help="renders per class prompt")
    p.add_argument("--per-group", type=int, default=8, help="emoji concepts per coarse group")
    p.add_argument("--judge-epochs", type=int, default=3)
    p.add_argument("--judge-max-train", type=int, default=None,
                   help="real training images per judge dataset, the emoji group judge's included (all)")
    p.add_argument("--record", default=None, help="record name (default prior-<name>)")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    prior = Path(args.prior) if Path(args.prior).is_dir() else prior_dir(args.prior)
    record = args.record or f"prior-{prior.name}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    render = load_config(RenderConfig, None, [f"model={prior}", "scheduler=DDPMScheduler", *args.overrides])
    cfg = load_config(PriorConfig, prior / "kka_prior_config.yaml")
    corpus = prior_corpus(prior)
    training = json.loads((prior / "kka_prior_training.json").read_text())
    init_ray(cfg.ray)
    size = cfg.corpus.image_size
    seen = [d for d in GREY if d in corpus["datasets"]]
    unseen = [d for d in GREY if d not in corpus["datasets"]]
    metrics = {"train_minutes": training["train_minutes"], "corpus_images": corpus["images"],
               "concepts": corpus["concepts"],
               "weights_mb": sum(f.stat().st_size for part in ("unet", "vae")
                                 for f in (prior / part).glob("*.safetensors")) / 2**20}
    pages, measured = [], []
    for kind, datasets in (("class_prompt", seen), ("zero_shot", unseen)):
        if not datasets:
            continue
        judge, acc, names = judge_for(datasets, size, args.judge_epochs, args.judge_max_train)
        metrics[f"{kind}_judge_accuracy"] = acc
        measured.append((kind, judge, class_prompts(names), args.per_prompt))
        if kind == "class_prompt":
            measured.append(("paraphrase", judge, paraphrase_prompts(names), args.per_prompt))
    sample, rest = emoji_sample(args.per_group)
    judge, acc = group_judge(rest, sample, size, args.judge_epochs * 4, args.judge_max_train)
    metrics["emoji_group_judge_accuracy"] = acc
    measured.append(("emoji_group", judge, emoji_prompts(sample), 2))
    tables = render_tables([(prompts, per_prompt) for _, _, prompts, per_prompt in measured])
    # Every kind's renders in one pass of the pool; its throughput is its busy span's, against the bare loop's
    # over the first kind's rows (the same pipeline, steps and size: the same cost per image).
    rendered, stats = render_pool(pa.concat_tables(tables), render, size)
    metrics["images_per_s"] = stats["images_per_s"]
    metrics["bare_images_per_s"] = render_bare(tables[0], render, size)[1]
    metrics["ray_overhead_ratio"] = stats["images_per_s"] / metrics["bare_images_per_s"]
    for (kind, judge, prompts, per_prompt), table in zip(measured, tables, strict=True):
        images = rendered[table.column("row_id").to_numpy()]  # the pool's rows come back in row id order
        labels = np.array(table.column("label").to_pylist())
        metrics[f"{kind}_accuracy"] = float((predict(judge, images) == labels).mean())
        png = out / f"{record}-{kind}.png"
        if kind == "emoji_group":  # the groups a person would look for first, a few concepts each
            keep = [i for i, (t, g) in enumerate(prompts) if list(GROUPS)[g] in GRID_GROUPS and i % 2 == 0][::2]
            rows = [i * per_prompt + j for i in keep for j in range(per_prompt)]
            grid(images[rows], [prompts[i][0] for i in keep], per_prompt, png)
        else:
            step = max(1, per_prompt // 8)
            grid(images[::step], [t for t, _ in prompts], min(8, per_prompt), png)
        pages.append(f"## {kind.replace('_', ' ')}\n\n![{kind}]({png.name})\n")
    command = invoked_command()
    sources = "; ".join(f"{k}: {v['images']} images ({v['licence']})" for k, v in corpus["sources"].items())
    md = "\n".join([
        f"# Offline text-to-image prior `{prior.name}`", "", f"Command: `{command}`", "",
        f"Trained by `{training['command']}` in {training['train_minutes']:.1f} min on {training['machine']}.", "",
        f"Corpus: {sources}; {corpus['concepts']} concepts. Never seen: {', '.join(unseen) or 'neither grey dataset'}.",
        "", "| metric | value |", "|---|---|", *[f"| {k} | {v:.3f} |" for k, v in metrics.items()], "",
        "Accuracy = share of renders that a judge assigns to the class (or emoji group) the prompt names; chance is "
        "0.10 for each. `class_prompt`: the classes of the grey dataset the prior saw, judged by a CNN trained on "
        "that dataset. `zero_shot`: the ten class prompts of the grey dataset the prior never saw, judged by that "
        "dataset's CNN. `paraphrase`: wordings that never occur in the training captions. `emoji_group`: "
        f"{len(sample)} emoji concepts ({args.per_group} per group of {len(GROUPS)}: {', '.join(GROUPS)}) "
        f"prompted as {' / '.join(repr(t) for t in ('an icon of a ...', 'a simple drawing of a ...'))}, judged by "
        "a group classifier trained on the real images of the *other* grouped concepts "
        "(`emoji_group_judge_accuracy`: its accuracy on the sample's real images). `*_judge_accuracy`: each "
        "judge on real test images.", "", *pages])
    write_record(record, metrics, md, out, command=command,
                 extra={"render": render.model_dump(), "corpus": corpus})
    print(json.dumps(metrics, indent=2))
