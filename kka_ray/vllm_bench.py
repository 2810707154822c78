"""The vLLM path measured beside the transformers one (record `vllm-cpu`): the same model, prompts and batches
through both generators in one process, vLLM's per-row seeds, a DPO adapter from a real round applied as a LoRA
request, and the Serve app answering through Ray Serve's LLM deployment. Runs in the vLLM venv (make setup-vllm).
"""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from kka_ray.config import RayConfig, Strict, load_config
from kka_ray.llm import LMConfig
from kka_ray.llm.hf import HFGenerator, dequantized, model_source
from kka_ray.records import write_record
from kka_ray.runtime import init_ray
from kka_ray.stages.generate import GenerateConfig, messages_for
from kka_ray.stages.prefer import PreferConfig, adapter_files, run_dpo

TOKEN_ENV = "KKA_BENCH_VLLM_TOKEN"
# How each venv is made and what runs in it: the vLLM CPU build pins an older transformers than the main venv.
ENVIRONMENTS = {"main": {"setup": "make setup", "tests": "make test"},
                "vllm": {"setup": "make setup-vllm", "tests": "make test-vllm",
                         "record": ".venv-vllm/bin/python jobs/bench_vllm.py --config configs/vllm/cpu.yaml"}}


class VLLMBenchConfig(Strict):
    name: str = Field("vllm-cpu", description="Record name: docs/results/<name>.json")
    model: str | None = Field(None, description="Model folder or hub id; None = the offline SmolLM2, dequantised")
    domain: str = "clothing items"
    descriptions: list[str] = Field(default_factory=lambda: [
        "a plain shirt with long sleeves and a row of buttons",
        "a checked flannel shirt with a collar and two chest pockets",
        "a short-sleeved shirt with a small printed pattern",
        "a denim shirt with snap buttons and a pointed collar"],
        description="Normal descriptions the prompts are built from (the pipeline's few-shot prompt)")
    prompts: int = Field(32, ge=2, description="Rows generated per timed pass (each its own seed)")
    batch_size: int = Field(16, ge=1, description="Rows per generate call, in both generators")
    max_new_tokens: int = Field(48, ge=1)
    threads: int = Field(2, ge=1, description="CPU threads of the transformers generator")
    dpo: PreferConfig = Field(default_factory=lambda: PreferConfig(
        steps=4, batch_size=2, learning_rate=5e-4, max_length=256, cpus_per_worker=2),
        description="The DPO round whose adapter is applied (the preference: a torn shirt over a car)")
    serve_requests: int = Field(8, ge=1, description="POST /v1/anomalies requests sent, 4 at a time")
    serve_count: int = Field(4, ge=1, description="Anomalies per request")
    results_dir: str = "docs/results"
    ray: RayConfig = Field(default_factory=RayConfig)


def batches(cfg: VLLMBenchConfig, seed0: int = 0) -> list[dict]:
    """The prompt rows in generator batches: messages (one cell per row) and seeds."""
    gen = GenerateConfig()
    rows = [messages_for(gen, cfg.domain, cfg.descriptions[i % len(cfg.descriptions)]) for i in range(cfg.prompts)]
    out = []
    for s in range(0, len(rows), cfg.batch_size):
        part = rows[s:s + cfg.batch_size]
        cells = np.empty(len(part), dtype=object)
        cells[:] = [list(m) for m in part]
        out.append({"messages": cells, "seed": np.arange(seed0 + s, seed0 + s + len(part))})
    return out


def timed_pass(generator, parts: list[dict]) -> tuple[list[str], float]:
    """Texts and tokens per second over all batches, after one untimed warm-up batch."""
    generator(parts[0])
    texts, tokens, start = [], 0, time.perf_counter()
    for b in parts:
        out = generator(b)
        texts += [str(t) for t in out["generated_text"]]
        tokens += int(np.sum(out["num_generated_tokens"]))
    return texts, tokens / (time.perf_counter() - start)


def dpo_adapter(cfg: VLLMBenchConfig, lm: LMConfig, workdir: Path) -> tuple[Path, dict[str, float]]:
    prompt = messages_for(GenerateConfig(), cfg.domain, cfg.descriptions[0])
    pairs = pa.Table.from_pylist([
        {"cluster": 0, "prompt": prompt, "chosen_id": f"h{i}", "chosen": "a shirt with one sleeve torn off",
         "rejected_id": f"e{i}", "rejected": "a red sports car parked on a street", "heldout": False}
        for i in range(4 * cfg.dpo.batch_size)])
    checkpoint, metrics = run_dpo(pairs, lm, cfg.dpo, seed=0, workdir=workdir)
    with checkpoint.as_directory() as d:
        return Path(shutil.copytree(adapter_files(Path(d)), workdir / "adapter")), metrics


@contextmanager
def vllm_service(model: str, overrides: tuple[str, ...] | list[str] = (), token_env: str = TOKEN_ENV):
    """The Serve app on the vllm backend (Ray Serve's LLM deployment) on a free loopback port with a fresh token
    in `token_env`: yields (the URL of POST /v1/anomalies, its auth headers, seconds the app took to start), and
    shuts the app down after. `overrides` are ServeConfig settings (`key=value`)."""
    from ray import serve

    from kka_ray.serve.app import build_app, http_options
    from kka_ray.serve.config import ServeConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(ServeConfig, None, [
        "generate.lm.backend=vllm", f"generate.lm.model={model}", "generate.lm.cpus_per_actor=1",
        "render.cpus_per_actor=0.5", *overrides, f"auth.token_env={token_env}", f"port={port}"])
    os.environ[token_env] = secrets.token_hex(16)
    serve.start(http_options=http_options(cfg))
    try:
        start = time.perf_counter()
        serve.run(build_app(cfg), name="kka-vllm", route_prefix="/")
        yield (f"http://127.0.0.1:{port}/v1/anomalies", {"Authorization": f"Bearer {os.environ[token_env]}"},
               time.perf_counter() - start)
    finally:
        serve.shutdown()
        os.environ.pop(token_env, None)


def serve_pass(cfg: VLLMBenchConfig, model: str) -> dict[str, float]:
    """`serve_requests` requests, 4 at a time, to the Serve app on the vllm backend."""
    import requests

    with vllm_service(model, [f"generate.lm.max_new_tokens={cfg.max_new_tokens}"]) as (url, headers, ready):
        def one(seed: int) -> tuple[bool, float]:
            body = {"normal_descriptions": cfg.descriptions[:2], "domain": cfg.domain, "count": cfg.serve_count,
                    "seed": seed, "return_images": False}
            t = time.perf_counter()
            r = requests.post(url, json=body, headers=headers, timeout=600)
            return r.status_code == 200 and bool(r.json()["anomalies"]), time.perf_counter() - t

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(cfg.serve_requests)))
    return {"serve_requests": cfg.serve_requests, "serve_requests_ok": sum(ok for ok, _ in results),
            "serve_start_s": ready, "serve_latency_s_median": float(np.median([s for _, s in results]))}


def run_vllm_bench(cfg: VLLMBenchConfig, command: str) -> dict[str, float]:
    from kka_ray.llm.vllm_backend import VLLMGenerator

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's 4 GiB default is for big models
    init_ray(cfg.ray)
    model = cfg.model or str(dequantized(*model_source(LMConfig())))
    lm = LMConfig(model=model, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                  cpus_per_actor=cfg.threads, max_model_len=2048)
    parts = batches(cfg)
    m: dict[str, float] = {}
    hf_texts, m["tokens_per_s_transformers"] = timed_pass(HFGenerator(lm.model_dump()), parts)
    gc.collect()
    engine = VLLMGenerator(lm.model_copy(update={"backend": "vllm"}).model_dump())
    texts, m["tokens_per_s_vllm"] = timed_pass(engine, parts)
    again, _ = timed_pass(engine, parts)
    m["seed_reproducible"] = float(again == texts)
    del engine
    gc.collect()
    workdir = Path(tempfile.mkdtemp(prefix="kka-vllm-bench-"))
    adapter, dpo = dpo_adapter(cfg, lm, workdir)
    m["dpo_round_reward_margin"] = dpo["round_reward_margin"]
    tuned = VLLMGenerator(lm.model_copy(update={"backend": "vllm", "adapter": str(adapter)}).model_dump())
    lora_texts, m["tokens_per_s_vllm_lora"] = timed_pass(tuned, parts)
    m["lora_changes_output"] = float(lora_texts != texts)
    m["lora_rows_changed"] = float(sum(a != b for a, b in zip(lora_texts, texts, strict=True)))
    del tuned
    gc.collect()
    m |= serve_pass(cfg, model)
    m["rows"], m["batch_size"], m["max_new_tokens"] = cfg.prompts, cfg.batch_size, cfg.max_new_tokens
    m["vllm_vs_transformers"] = m["tokens_per_s_vllm"] / m["tokens_per_s_transformers"]
    write_record(cfg.name, m, markdown(cfg, m, command, hf_texts[0], texts[0], lora_texts[0]), cfg.results_dir,
                 command=command, extra={"versions": versions(), "config": cfg.model_dump(mode="json"),
                                           "environments": ENVIRONMENTS})
    shutil.rmtree(workdir, ignore_errors=True)
    return m


def versions() -> dict[str, str]:
    import ray
    import torch
    import transformers
    import vllm

    return {"vllm": vllm.__version__, "ray": ray.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def markdown(cfg: VLLMBenchConfig, m: dict[str, float], command: str, hf: str, base: str, lora: str) -> str:
    v = versions()
    return "\n".join([
        f"# {cfg.name}", "",
        f"SmolLM2-135M-Instruct (the offline model, dequantised) on {cfg.prompts} few-shot prompts, batches of "
        f"{cfg.batch_size}, {cfg.max_new_tokens} new tokens, each row its own seed; vLLM {v['vllm']} (CPU build), "
        f"Ray {v['ray']}, torch {v['torch']}, transformers {v['transformers']}, in the vLLM venv.", "",
        f"Command (vLLM venv, `make setup-vllm`): `{command}`", "",
        "| | tokens/s |", "|---|---|",
        f"| transformers (HFGenerator, {cfg.threads} threads) | {m['tokens_per_s_transformers']:.1f} |",
        f"| vLLM (its own engine, in process) | {m['tokens_per_s_vllm']:.1f} |",
        f"| vLLM with the DPO adapter as a LoRA request | {m['tokens_per_s_vllm_lora']:.1f} |", "",
        f"- Same text on a rerun with the same seeds: **{'yes' if m['seed_reproducible'] else 'no'}**.",
        f"- The adapter of a real DPO round (reward margin {m['dpo_round_reward_margin']:.2f}) changed "
        f"{m['lora_rows_changed']:.0f} of {cfg.prompts} rows.",
        f"- Serve (Ray Serve's LLM deployment behind the project's ingress): {m['serve_requests_ok']:.0f} of "
        f"{m['serve_requests']:.0f} requests answered with anomalies; start {m['serve_start_s']:.0f} s, median "
        f"latency {m['serve_latency_s_median']:.1f} s.", "",
        "First row's text:", "", f"- transformers: {hf!r}", f"- vLLM: {base!r}", f"- vLLM + adapter: {lora!r}", ""])
