"""The paper's Fig. 4 from the loop benchmark's finished runs -> docs/results/<name>.json (+ .md, .png): hard-only,
easy-only and random generated anomalies of equal number, and 2x / 4x initial anomalies.

    python jobs/bench_fig4.py --config configs/kka/fig4_fmnist.yaml
Rerun to resume: each run folder caches its results (fig4.json).
"""

from kka_ray.cli import parse_config, parser
from kka_ray.fig4 import Fig4Config, run_fig4
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], Fig4Config).parse_args(argv)
    cfg = parse_config(Fig4Config, args)
    m = run_fig4(cfg, invoked_command())
    print(f"{cfg.name}: " + ", ".join(f"{k.removeprefix('auroc_')} {v:.1f}" for k, v in m.items()
                                      if k.startswith("auroc_") and "ci95" not in k))
