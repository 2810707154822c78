"""kNN's head variant, sum against one-sided, judged without the test split (record knn-combine-<dataset>).

    python jobs/knn_combine.py --config configs/knn_combine/mnist.yaml
"""

from kka_ray.cli import parse_config, parser
from kka_ray.knn_combine import KNNCombineConfig, run_knn_combine
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], KNNCombineConfig).parse_args(argv)
    cfg = parse_config(KNNCombineConfig, args)
    metrics = run_knn_combine(cfg, command=invoked_command())
    print(f"{cfg.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
