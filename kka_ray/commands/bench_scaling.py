"""Fit time of one detector with 1 and 2 Ray Train workers (record scaling-<detector>).

    python jobs/bench_scaling.py --config configs/scaling/ssd.yaml
"""

from kka_ray.cli import parse_config, parser
from kka_ray.records import invoked_command
from kka_ray.scaling import ScalingConfig, run_scaling


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], ScalingConfig).parse_args(argv)
    cfg = parse_config(ScalingConfig, args)
    metrics = run_scaling(cfg, command=invoked_command())
    print(f"{cfg.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
