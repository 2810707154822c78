# The two commands of the README. Both run the idempotent set-up first.
PY := .venv/bin/python
export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint benchmark

setup:
	bash scripts/setup.sh

# Main job on the embedded offline default (until the KKA loop lands: the Deep SAD benchmark on one class).
demo: setup
	$(PY) jobs/benchmark.py --config configs/demo.yaml

test: setup
	$(PY) -m ruff check kka_ray jobs tests
	$(PY) -m pytest -q

# The recorded baseline: docs/results/fmnist-deepsad-baseline.json (about an hour on 2 cores).
benchmark: setup
	$(PY) jobs/benchmark.py --config configs/benchmark/fmnist_deepsad.yaml
