"""Benchmark a detector over every normal class of a dataset (several seeds) and write a result record.

    python jobs/benchmark.py --config configs/benchmark/fmnist_deepsad.yaml [--set detector.epochs=50]
"""

from kka_ray.benchmark import BenchmarkConfig, run_benchmark
from kka_ray.cli import parse_config, parser
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], BenchmarkConfig).parse_args(argv)
    cfg = parse_config(BenchmarkConfig, args)
    metrics = run_benchmark(cfg, command=invoked_command())
    line = f"mean AUROC {metrics['mean_auroc']:.1f}"
    if "mean_auroc_oracle" in metrics:
        line += f", oracle {metrics['mean_auroc_oracle']:.1f}"
    print(f"{cfg.name}: {line} over {int(metrics['tasks'])} tasks; outputs in {cfg.run_dir}/{cfg.name}/")
