"""KKA loop benchmark over normal classes and seeds -> docs/results/<name>.json (+ .md, .png).

    python jobs/bench_kka.py --config configs/kka/bench_fmnist.yaml
Interrupted runs resume from their last completed iteration when the command is run again.
"""

from kka_ray.cli import parse_config, parser
from kka_ray.loop_bench import LoopBenchConfig, run_loop_bench
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], LoopBenchConfig).parse_args(argv)
    cfg = parse_config(LoopBenchConfig, args)
    m = run_loop_bench(cfg, invoked_command())
    T = int(m["iterations"])
    print(f"{cfg.name}: no anomalies {m['auroc_no_anomalies']:.1f}, KKA(0) {m['auroc_kka_iter0']:.1f}, "
          f"KKA({T}) {m[f'auroc_kka_iter{T}']:.1f} (KKA({T}) - KKA(0) {m['gain_final_vs_kka0']:+.1f}); hard share "
          f"{m['hard_share_iter0']:.3f} -> {m[f'hard_share_iter{T}']:.3f}")
