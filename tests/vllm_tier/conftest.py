"""The vLLM tier (`make test-vllm`, in .venv-vllm): collected only where vllm is installed (tests/conftest.py)."""

import os
import socket

import pytest

# vLLM's CPU build reserves this many GiB of key-value cache per engine (its default, 4 GiB, is more than a
# 135M model on short prompts needs); set before Ray starts so the engine actors inherit it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A local S3 server (moto) stands in for object storage: boto3, which Ray's LoRA loader uses, reads these from
# the environment, which the engine actors inherit (set here, before Ray starts).
S3_ENDPOINT = f"http://127.0.0.1:{_free_port()}"
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                   "AWS_ENDPOINT_URL": S3_ENDPOINT})


@pytest.fixture(scope="session")
def s3():
    """A bucket `kka-tier` on the local S3 server; yields a boto3 client."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = int(S3_ENDPOINT.rsplit(":", 1)[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    client = boto3.client("s3", endpoint_url=S3_ENDPOINT)
    client.create_bucket(Bucket="kka-tier")
    yield client
    server.stop()


@pytest.fixture(scope="session")
def smollm2() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors folder, dequantised once from the offline GGUF."""
    from kka_ray.llm import LMConfig
    from kka_ray.llm.hf import dequantized, model_source

    return str(dequantized(*model_source(LMConfig())))
