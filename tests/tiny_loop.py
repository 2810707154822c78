"""A whole KKA run configuration on tiny models, for end-to-end tests of the loop, the job path and Serve."""

from kka_ray.loop import KKAConfig


def tiny_config(tiny, run_dir, name="tiny", **update) -> KKAConfig:
    tree = {
        "name": name, "run_dir": str(run_dir), "normal_classes": ["shirt"], "seed": 3, "grid_size": 8,
        "select": {"k": 2, "max_samples": 30, "features": {"image_size": 32, "batch_size": 30, "device": "cpu"}},
        "generate": {"samples_per_representative": 4,
                     "lm": {"model": tiny["lm"], "max_new_tokens": 24, "batch_size": 4, "cpus_per_actor": 0.5},
                     "clean": {"min_words": 1, "similarity_threshold": None, "drop_truncated": False}},
        "render": {"model": tiny["sd"], "steps": 2, "batch_size": 8, "cpus_per_actor": 0.5},
        # an almost untrained theta_C places the random renders between the 88th and 97th percentile of the
        # validation distances (seed 3); the 93rd as the boundary puts them on both sides, so DPO rounds happen
        "evaluator": {"pretrain": False, "epochs": 1, "lr": 1e-6, "batch_size": 512, "rep_dim": 8},
        "split": {"quantile": 0.93},
        "prefer": {"steps": 2, "batch_size": 2, "max_length": 1024, "cpus_per_worker": 1,
                   "target_modules": ["q_proj", "v_proj"], "max_pairs": 8},
        "update": {"mode": "rep", "iterations": 2},
    }
    for k, v in update.items():
        tree[k] = {**tree.get(k, {}), **v} if isinstance(v, dict) else v
    return KKAConfig.model_validate(tree)
