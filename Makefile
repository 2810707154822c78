# The two commands of the README. Both run the idempotent set-up first.
PY := .venv/bin/python
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# glibc malloc thresholds fixed from the start (see kka_ray/runtime.py: fresh processes ran 30% slower)
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: setup setup-vllm demo test test-vllm lint benchmark

setup:
	bash scripts/setup.sh

PRIOR := kka_ray/render/priors/general/model_index.json

# The offline text-to-image priors ship with the repository; this trains the demo's (the general one, which has
# never seen Fashion-MNIST) only where it is missing.
$(PRIOR):
	$(PY) jobs/train_prior.py --config configs/prior/general.yaml

# The vLLM test tier's own venv (.venv-vllm): the CPU build of vLLM beside the project (issue 17).
setup-vllm:
	bash scripts/setup_vllm.sh

# Main job on the embedded offline default: the KKA loop on Fashion-MNIST "shirt"; a rerun resumes an
# unfinished runs/kka-demo, or starts runs/kka-demo-2, -3, ... (never deletes a run).
demo: setup $(PRIOR)
	$(PY) jobs/kka_loop.py --config configs/kka/demo.yaml --continue

test: setup
	$(PY) -m ruff check kka_ray jobs tests
	$(PY) -m pytest -q

# The vLLM tier: the vllm backend and Serve generating for real on the CPU build of vLLM (tests/vllm_tier).
test-vllm: setup-vllm
	.venv-vllm/bin/python -m pytest -q tests/vllm_tier

# The recorded baseline: docs/results/fmnist-deepsad-baseline.json (about an hour on 2 cores).
benchmark: setup
	$(PY) jobs/benchmark.py --config configs/benchmark/fmnist_deepsad.yaml
