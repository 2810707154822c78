"""KKA's controls over normal classes and seeds -> docs/results/<name>.json (+ .md, .png): SAD without anomalies,
with noise, with the prior's own random captions, with KKA(0) rendered by the general and by the in-domain prior,
and with real anomalies (oracle), each with as many anomalies as KKA(0)'s set.

    python jobs/bench_controls.py --config configs/controls/fmnist.yaml
Rerun the command to resume: finished runs and controls are read back from the run folders.
"""

from kka_ray.cli import parse_config, parser
from kka_ray.controls import ControlsConfig, run_benchmark
from kka_ray.records import invoked_command


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], ControlsConfig).parse_args(argv)
    cfg = parse_config(ControlsConfig, args)
    m = run_benchmark(cfg, invoked_command())
    print(f"{cfg.name}: {m['classes']:.0f} classes x {m['seeds']:.0f} seeds; " + ", ".join(
        f"{k.removeprefix('gain_')} {v:+.1f}" for k, v in m.items() if k.startswith("gain_") and "ci95" not in k))
