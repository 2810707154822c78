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
The round's loss, reward margin and reward accuracy are means over all its steps (`round_means`), not the last
batch's.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from pydantic import Field

from kka_ray.config import Strict
from kka_ray.llm import LMConfig
from kka_ray.precision import BF16_DESCRIPTION, Bf16, resolve_bf16
from kka_ray.resources import peak_rss_mb
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
    bf16: Bf16 = Field("auto", description=BF16_DESCRIPTION)
    precompute_ref: bool = Field(False, description="Reference log-probabilities computed once before training, "
                                 "in no-grad batches of `ref_batch_size`, for the pairs the steps will use. Off: "
                                 "when each pair is used once it saves no compute, and on 2 CPU cores the round "
                                 "took longer with it (perf-cpu: 91 s vs 85 s); on when steps revisit pairs")
    ref_batch_size: int = Field(16, ge=1, description="Pairs per reference forward pass when precomputed")
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


def mark_trained(pairs: pa.Table, cfg: PreferConfig, seed: int) -> pa.Table:
    """A `trained` column: the seeded draw of the pairs the DPO steps consume (steps x batch x accumulation x
    workers). The trainer would draw as many at random anyway; drawing them first means the reference
    log-probabilities are precomputed for those pairs only, not for all `max_pairs`."""
    used = cfg.steps * cfg.batch_size * cfg.grad_accum * cfg.num_workers
    mask = np.ones(len(pairs), dtype=bool)
    if len(pairs) > used:
        mask[:] = False
        mask[np.random.default_rng(seed).choice(len(pairs), used, replace=False)] = True
    return pairs.append_column("trained", pa.array(mask))


def dpo_records(pairs: pa.Table) -> list[dict]:
    """trl's conversational preference format: the prompt's messages, one assistant turn per completion."""
    return [{"prompt": r["prompt"],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.to_pylist()]


# trl's per-step figures -> the names of their means over a DPO round in run_dpo's metrics
ROUND_MEANS = {"loss": "round_loss", "rewards/margins": "round_reward_margin",
               "rewards/accuracies": "round_reward_accuracy"}


def round_means(log_history: list[dict]) -> dict[str, float]:
    """Means of ROUND_MEANS over a round's training steps (logged with `logging_steps=1`: one entry per optimizer
    step, each carrying `loss`), and their count as `round_steps`. The Trainer's closing entry (`train_loss`) and
    other entries without `loss` are not steps. NaN for a figure no step logged."""
    steps = [e for e in log_history if "loss" in e]
    out = {"round_steps": float(len(steps))}
    for key, name in ROUND_MEANS.items():
        values = [e[key] for e in steps if key in e]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def dpo_loop_per_worker(config: dict) -> None:
    import datasets
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from kka_ray.llm.hf import load_causal_lm

    class RoundSummary(TrainerCallback):
        """Adds the round's means (round_means), the mean optimizer-step seconds and the setup seconds (reference
        precompute included) to the logged metrics that RayTrainReportCallback reports with the checkpoint. Both
        act on the one save, at the last step: after that step's log entry, and this one runs first."""

        def __init__(self, setup_start: float):
            self.setup_start, self.times, self.setup = setup_start, [], 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.setup = time.time() - self.setup_start

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.time() - self.step_start)

        def on_save(self, args, state, control, **kwargs):
            state.log_history.append({**round_means(state.log_history), "step_seconds": float(np.mean(self.times)),
                                      "setup_seconds": self.setup, "bf16": float(args.bf16),
                                      "peak_rss_mb": peak_rss_mb()})

    datasets.utils.logging.set_verbosity_error()  # its cache fingerprinting dumps bytecode on trl's lambdas
    datasets.disable_caching()
    setup_start = time.time()
    cfg, lm = PreferConfig(**config["prefer"]), LMConfig(**config["lm"])
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    if lm.dtype == "auto" and device == "cpu":
        # fp32 master weights: `bf16` above decides autocast; bf16 weights (what `auto` loads for generation on a
        # native-bf16 CPU) would train the LoRA update in bf16 and measured no faster per step.
        lm = lm.model_copy(update={"dtype": "float32"})
    tok, model = load_causal_lm(lm, device, merge_adapter=False, trainable=True)
    tok.padding_side = "right"  # trl pads its own batches; right padding is what it expects for training
    lora = None if lm.adapter else LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, beta=cfg.beta, learning_rate=cfg.learning_rate, max_steps=cfg.steps,
            per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            max_length=cfg.max_length, bf16=resolve_bf16("dpo", cfg.bf16, device), gradient_checkpointing=False,
            use_cpu=device == "cpu",
            logging_steps=1, save_strategy="steps", save_steps=cfg.steps,  # every step logged: round_means
            save_only_model=True, report_to="none", seed=config["seed"], data_seed=config["seed"],
            disable_tqdm=True, dataloader_num_workers=0, ddp_find_unused_parameters=False,
            precompute_ref_log_probs=cfg.precompute_ref, precompute_ref_batch_size=cfg.ref_batch_size,
        )
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(ray.get(config["pairs"])),
                             processing_class=tok, peft_config=lora,
                             callbacks=[RoundSummary(setup_start), RayTrainReportCallback()])
        prepare_trainer(trainer).train()


def run_dpo(pairs: pa.Table, lm: LMConfig, cfg: PreferConfig, *, seed: int, workdir: Path):
    """Fine-tune `lm` (base + its adapter, if any) on the pairs (those marked `trained` where the column is
    there); returns (checkpoint with the adapter, metrics). In the metrics, `round_loss`, `round_reward_margin`
    and `round_reward_accuracy` are the means over all the round's steps; trl's own keys (`loss`,
    `rewards/margins`, ...) are its last step's."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if "trained" in pairs.column_names:
        pairs = pairs.filter(pairs.column("trained"))
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
