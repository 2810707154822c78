"""The vLLM path beside the transformers one on this machine (record vllm-cpu), in the vLLM venv.

    make setup-vllm && .venv-vllm/bin/python jobs/bench_vllm.py --config configs/vllm/cpu.yaml
"""

from kka_ray.cli import parse_config, parser
from kka_ray.records import invoked_command
from kka_ray.vllm_bench import VLLMBenchConfig, run_vllm_bench


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], VLLMBenchConfig).parse_args(argv)
    cfg = parse_config(VLLMBenchConfig, args)
    metrics = run_vllm_bench(cfg, command=invoked_command())
    print(f"{cfg.name}: " + ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
