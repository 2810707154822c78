"""The paper's Table II on this project's detectors, with and without KKA, over every class of a dataset.

    python jobs/table2.py --config configs/table2/fmnist.yaml [--set classes=[shirt]]
"""

from kka_ray.cli import parse_config, parser
from kka_ray.records import invoked_command
from kka_ray.table2 import Table2Config, run_table2


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], Table2Config).parse_args(argv)
    cfg = parse_config(Table2Config, args)
    metrics = run_table2(cfg, command=invoked_command())
    best = {k: round(v, 1) for k, v in metrics.items() if k.startswith("auroc_") and not k.endswith("_ci95")}
    print(f"{cfg.name}: {best}; outputs in {cfg.run_dir}/{cfg.name}/")
