"""Stage 6 (Eq. 7): preference pairs from the hard / easy split, and DPO of the language model in Ray Train.

Pairing rule: within one representative's prompt (cluster), each hard description is `chosen` against up to
`pairs_per_hard` different easy descriptions of the same prompt, taken round-robin from a seeded shuffle so
the easy ones are spread evenly. A prompt with no easy description borrows them from the other prompts of the
task (a comparable prompt: same template, another representative). A prompt with no hard description gives
no pair. At most `max_pairs` pairs are kept (a seeded draw).

DPO: trl's DPOTrainer with a peft LoRA adapter, run by Ray Train's TorchTrainer through Ray's Transformers
integration (prepare_trainer, RayTrainReportCallback), so it is data-parallel across workers. The reference
model is the previous iteration's model: iteration 0 trains a fresh adapter against the base model; later
iterations keep training the previous adapter, with a frozen copy of it as the reference (trl does this for
a PeftModel passed without a ref_model). Every iteration's adapter is a standalone peft adapter on the base.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from pydantic import Field

from kka_ray.config import Strict
from kka_ray.llm import LMConfig
from kka_ray.stages.generate import GenerateConfig, messages_for


class PreferConfig(Strict):
    beta: float = Field(0.1, gt=0, description="DPO temperature (authors: 0.1)")
    learning_rate: float = Field(5e-5, gt=0, description="LoRA learning rate (authors: 5e-5)")
    steps: int = Field(20, ge=1, description="Optimizer steps per iteration")
    batch_size: int = Field(4, ge=1, description="Pairs per step per worker")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    lora_r: int = Field(8, ge=1, description="LoRA rank (authors: 8)")
    lora_alpha: int = Field(8, ge=1, description="LoRA alpha (authors: 8)")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="Modules that get LoRA weights")
    max_length: int = Field(512, ge=16, description="Longest prompt + completion in tokens (truncated beyond)")
    pairs_per_hard: int = Field(4, ge=1, description="Easy descriptions each hard one is paired with")
    max_pairs: int = Field(600, ge=1, description="Cap on pairs per iteration (authors: about 590)")
    bf16: bool = Field(False, description="bf16 training (fp32 lowered the loss faster per step on CPU here)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel DPO)")
    cpus_per_worker: float = Field(2.0, gt=0)
    use_gpu: bool = False


def build_pairs(anomalies: pa.Table, gen: GenerateConfig, domain: str, cfg: PreferConfig, seed: int) -> pa.Table:
    """Preference pairs (prompt messages, chosen, rejected) with the ids of both descriptions."""
    df = anomalies.select(["anomaly_id", "cluster", "representative_text", "sentence", "hard"]).to_pandas()
    rng = np.random.default_rng(seed)
    easy_all = df[~df["hard"]]
    rows = []
    for cluster, group in df.groupby("cluster", sort=True):
        hard, easy = group[group["hard"]], group[~group["hard"]]
        if hard.empty:
            continue
        pool = easy if len(easy) else easy_all
        if pool.empty:
            continue
        pool = pool.iloc[rng.permutation(len(pool))]
        k = min(cfg.pairs_per_hard, len(pool))
        messages = messages_for(gen, domain, group["representative_text"].iloc[0])
        for i, h in enumerate(hard.itertuples()):
            for j in range(k):
                e = pool.iloc[(i * k + j) % len(pool)]
                rows.append({"cluster": int(cluster), "prompt": messages, "chosen_id": h.anomaly_id,
                             "chosen": h.sentence, "rejected_id": e["anomaly_id"], "rejected": e["sentence"]})
    if len(rows) > cfg.max_pairs:
        rows = [rows[i] for i in np.sort(rng.choice(len(rows), cfg.max_pairs, replace=False))]
    schema = pa.schema([("cluster", pa.int64()),
                        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
                        ("chosen_id", pa.string()), ("chosen", pa.string()),
                        ("rejected_id", pa.string()), ("rejected", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def dpo_records(pairs: pa.Table) -> list[dict]:
    """trl's conversational preference format: the prompt's messages, one assistant turn per completion."""
    return [{"prompt": r["prompt"],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.to_pylist()]


def dpo_loop_per_worker(config: dict) -> None:
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from trl import DPOConfig, DPOTrainer

    from kka_ray.llm.hf import load_causal_lm

    datasets.utils.logging.set_verbosity_error()  # its cache fingerprinting dumps bytecode on trl's lambdas
    datasets.disable_caching()
    cfg, lm = PreferConfig(**config["prefer"]), LMConfig(**config["lm"])
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    tok, model = load_causal_lm(lm, device, merge_adapter=False, trainable=True)
    tok.padding_side = "right"  # trl pads its own batches; right padding is what it expects for training
    lora = None if lm.adapter else LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, beta=cfg.beta, learning_rate=cfg.learning_rate, max_steps=cfg.steps,
            per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length, bf16=cfg.bf16, gradient_checkpointing=False, use_cpu=device == "cpu",
            logging_steps=max(1, cfg.steps // 10), save_strategy="steps", save_steps=cfg.steps,
            save_only_model=True, report_to="none", seed=config["seed"], data_seed=config["seed"],
            disable_tqdm=True, dataloader_num_workers=0, ddp_find_unused_parameters=False,
        )
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(ray.get(config["pairs"])),
                             processing_class=tok, peft_config=lora, callbacks=[RayTrainReportCallback()])
        prepare_trainer(trainer).train()


def run_dpo(pairs: pa.Table, lm: LMConfig, cfg: PreferConfig, *, seed: int, workdir: Path):
    """Fine-tune `lm` (base + its adapter, if any) on the pairs; returns (checkpoint with the adapter, metrics)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if len(pairs) == 0:
        raise ValueError("DPO needs at least one preference pair (no hard or no easy anomaly this iteration)")
    trainer = TorchTrainer(
        dpo_loop_per_worker,
        train_loop_config={"prefer": cfg.model_dump(), "lm": lm.model_dump(), "seed": seed,
                           "pairs": ray.put(dpo_records(pairs))},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"dpo-{uuid.uuid4().hex[:8]}", storage_path=str(Path(workdir).resolve())),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("DPO finished without a checkpoint")
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return result.checkpoint, metrics


def adapter_files(checkpoint_dir: Path) -> Path:
    """The peft adapter inside a RayTrainReportCallback checkpoint (checkpoint/<files>)."""
    matches = sorted(checkpoint_dir.rglob("adapter_config.json"), key=lambda p: len(p.parts))
    if not matches:
        raise FileNotFoundError(f"no adapter_config.json under {checkpoint_dir}")
    return matches[0].parent
