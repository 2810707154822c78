"""The vLLM tier (`make test-vllm`, in .venv-vllm): collected only where vllm is installed (tests/conftest.py)."""

import os

import pytest

# vLLM's CPU build reserves this many GiB of key-value cache per engine (its default, 4 GiB, is more than a
# 135M model on short prompts needs); set before Ray starts so the engine actors inherit it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors folder, dequantised once from the offline GGUF."""
    from kka_ray.llm import LMConfig
    from kka_ray.llm.hf import dequantized, model_source

    return str(dequantized(*model_source(LMConfig())))
