"""The vLLM path beside the transformers one (record vllm-cpu), in the vLLM venv.

Entry point for `python jobs/bench_vllm.py` and `ray job submit -- python jobs/bench_vllm.py`; the code and its
options: kka_ray/commands/bench_vllm.py (`--help`).
"""

from kka_ray.commands.bench_vllm import main

if __name__ == "__main__":
    main()
