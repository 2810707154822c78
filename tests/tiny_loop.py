"""A whole KKA run configuration on tiny models, for end-to-end tests of the loop, the job path and Serve, and
copies of the session's tiny run as it stood after an iteration."""

import json
import shutil
from pathlib import Path

import yaml

from kka_ray.loop import KKAConfig
from kka_ray.loop_bench import FIXED

# Timing columns differ between runs by nature; everything else must be identical.
TIMING = {"generation_seconds", "batch_start", "batch_end", "render_seconds"}


def stable(table):
    return table.drop_columns([c for c in table.column_names if c in TIMING])


def tiny_config(tiny, run_dir, name="tiny", **update) -> KKAConfig:
    tree = {
        "name": name, "run_dir": str(run_dir), "normal_classes": ["shirt"], "seed": 3, "grid_size": 8,
        "select": {"k": 2, "max_samples": 30, "features": {"image_size": 32, "batch_size": 30, "device": "cpu"}},
        "generate": {"samples_per_representative": 4,
                     "lm": {"model": tiny["lm"], "max_new_tokens": 24, "batch_size": 4, "cpus_per_actor": 0.5},
                     "clean": {"min_words": 1, "similarity_threshold": None, "drop_truncated": False}},
        "render": {"model": tiny["sd"], "steps": 2, "batch_size": 8, "cpus_per_actor": 0.5},
        # an almost untrained theta_C places the random renders between the 88th and 97th percentile of the
        # validation distances (seed 3); the 93rd as the boundary puts them on both sides, so DPO rounds happen.
        # Fits run in Ray Train's local mode (in this process); the job-submit test runs the same loop on workers.
        "evaluator": {"pretrain": False, "epochs": 1, "lr": 1e-6, "batch_size": 512, "rep_dim": 8, "num_workers": 0},
        "split": {"quantile": 0.93},
        "prefer": {"steps": 2, "batch_size": 2, "max_length": 1024, "cpus_per_worker": 1, "num_workers": 0,
                   "target_modules": ["q_proj", "v_proj"], "max_pairs": 8},
        "update": {"mode": "rep", "iterations": 2},
    }
    for k, v in update.items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    return KKAConfig.model_validate(tree)


def after_iteration(state, t: int, dest: Path, **update) -> Path:
    """A copy of the tiny run's folder as it stood when iteration t's checkpoint was written (what a run stopped
    or killed between iterations t and t + 1 leaves), its config updated. The loop is deterministic, so this is
    the folder a second run with --stop-after t would write, without paying for iterations 0 .. t again."""
    later = [f"iter_{k}" for k in range(t + 1, len(state.rows))]
    shutil.copytree(Path(state.store.path("")), dest, ignore=shutil.ignore_patterns(
        *later, "report.md", "auroc.png", "summary.json", FIXED))
    saved = json.loads((dest / "state.json").read_text())
    (dest / "state.json").write_text(json.dumps({**saved, "completed": t, "rows": saved["rows"][:t + 1]}))
    tree = yaml.safe_load((dest / "config.yaml").read_text())
    tree.update(name=dest.name, run_dir=str(dest.parent))
    for section, values in update.items():
        tree[section].update(values)
    (dest / "config.yaml").write_text(yaml.safe_dump(tree))
    return dest
