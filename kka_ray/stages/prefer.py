"""Stage 6 (Eq. 7): preference pairs from the hard / easy split, and DPO of the language model in Ray Train.

Pairs compare whole completions of one prompt (a representative's), the unit the model writes: a completion is
its lines as the cleaner parsed them, one description per line, and its score is the mean level of its lines,
hard and valid 2 > easy and valid 1 > rejected by the cleaner 0 (restates the normal class, duplicate,
malformed, truncated, ...). Pairing single lines had taught the model to write one line; whole completions keep
the format and move the content: more descriptions near the boundary, fewer that the cleaner throws away. Each
completion is `chosen` against up to `pairs_per_chosen` completions of the same prompt scoring at least
`min_score_gap` lower, taken round-robin from a seeded shuffle. A seeded share of each prompt's completions is
held out: their pairs are never trained, and the round's reward margin on them says whether DPO generalises.
At most `max_pairs` training and `max_heldout_pairs` held-out pairs are kept (seeded draws).

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
import pandas as pd
import pyarrow as pa
import ray
from pydantic import Field

from kka_ray.config import LOCAL_MODE, Strict
from kka_ray.llm import LMConfig
from kka_ray.precision import BF16_DESCRIPTION, Bf16, resolve_bf16
from kka_ray.resources import peak_rss_mb
from kka_ray.runtime import trainer_cls
from kka_ray.stages.generate import GenerateConfig, messages_for
from kka_ray.tracking import fit_run, fit_tracking, log_step


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
    pairs_per_chosen: int = Field(4, ge=1, description="Worse completions each completion is paired with")
    min_score_gap: float = Field(0.5, gt=0, le=2, description="Least difference in mean line level (hard 2, easy "
                                 "1, rejected 0) between a pair's chosen and rejected completion")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each prompt's completions held out: "
                                    "their pairs measure the round's reward margin, never trained")
    max_pairs: int = Field(600, ge=1, description="Cap on training pairs per iteration (authors: about 590)")
    max_heldout_pairs: int = Field(32, ge=0, description="Cap on held-out pairs (each costs forward passes of "
                                   "policy and reference after the round)")
    bf16: Bf16 = Field("auto", description=BF16_DESCRIPTION)
    precompute_ref: bool = Field(False, description="Reference log-probabilities computed once before training, "
                                 "in no-grad batches of `ref_batch_size`, for the pairs the steps will use (and the "
                                 "held-out ones). Off: here each pair is used once, and on 2 CPU cores an 8-step "
                                 "round took 64 s without it and 62 s with it (perf-cpu-avx2, bf205df: the reference "
                                 "pass adds 10 s to the set-up and saves 1.7 s per step). On when steps revisit pairs")
    ref_batch_size: int = Field(16, ge=1, description="Pairs per reference forward pass when precomputed")
    share_prefix: bool = Field(True, description="Run the token prefix every row of a batch shares (the few-shot "
                               "turns) and each pair's prompt once per forward pass, not once per row "
                               "(kka_ray.llm.dpo_forward); same log-probabilities and gradients. Off: trl's "
                               "plain forward")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (data-parallel DPO)" + LOCAL_MODE)
    max_failures: int = Field(1, ge=0, description="Ray Train restarts of a round whose worker died (a preempted "
                              "node, a kill): the round starts again from its first step, with the same seed")
    cpus_per_worker: float = Field(2.0, gt=0)
    use_gpu: bool = False


LEVEL = {"hard": 2, "easy": 1, "rejected": 0}
PAIRS_SCHEMA = pa.schema([
    ("cluster", pa.int64()), ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("chosen_id", pa.string()), ("chosen", pa.string()), ("chosen_score", pa.float64()),
    ("rejected_id", pa.string()), ("rejected", pa.string()), ("rejected_score", pa.float64()),
    ("heldout", pa.bool_())])


def completions(judged: pa.Table, rejects: pa.Table) -> pd.DataFrame:
    """One row per generated completion (row_id): its cluster and representative, its text (its parsed lines,
    in order, one per line) and its score (mean line level)."""
    cols = ["row_id", "line", "cluster", "representative_text", "sentence"]
    for name, table in (("judged anomalies", judged), ("rejected lines", rejects)):
        if missing := [c for c in cols if c not in table.column_names]:
            raise ValueError(f"DPO pairs: the {name} lack columns {missing} (a run made before completions were "
                             "kept whole cannot continue; start a new run)")
    kept = judged.select([*cols, "hard"]).to_pandas()
    kept["level"] = np.where(kept.pop("hard"), LEVEL["hard"], LEVEL["easy"])
    lines = pd.concat([kept, rejects.select(cols).to_pandas().assign(level=LEVEL["rejected"])])
    lines = lines[lines["sentence"] != ""].sort_values(["row_id", "line"], kind="stable")
    g = lines.groupby("row_id", sort=True)
    return pd.DataFrame({"cluster": g["cluster"].first(), "representative_text": g["representative_text"].first(),
                         "text": g["sentence"].agg("\n".join), "score": g["level"].mean()}).reset_index()


def build_pairs(judged: pa.Table, rejects: pa.Table, gen: GenerateConfig, domain: str, cfg: PreferConfig,
                seed: int) -> pa.Table:
    """Preference pairs (prompt messages, chosen and rejected completions, their ids and scores, held out or
    not) from one iteration's judged anomalies and rejected lines."""
    comp = completions(judged, rejects)
    rng = np.random.default_rng(seed)
    comp["heldout"] = False
    for _, idx in comp.groupby("cluster", sort=True).groups.items():
        n = int(round(cfg.heldout_fraction * len(idx)))
        comp.loc[rng.choice(np.asarray(idx), n, replace=False), "heldout"] = True
    rows = []
    for (cluster, heldout), group in comp.groupby(["cluster", "heldout"], sort=True):
        group = group.iloc[rng.permutation(len(group))]
        messages = messages_for(gen, domain, group["representative_text"].iloc[0])
        for i, c in enumerate(group.itertuples()):
            worse = group[group["score"] <= c.score - cfg.min_score_gap]
            for j in range(min(cfg.pairs_per_chosen, len(worse))):
                w = worse.iloc[(i * cfg.pairs_per_chosen + j) % len(worse)]
                rows.append({"cluster": int(cluster), "prompt": messages, "chosen_id": f"r{c.row_id}",
                             "chosen": c.text, "chosen_score": float(c.score), "rejected_id": f"r{w['row_id']}",
                             "rejected": w["text"], "rejected_score": float(w["score"]), "heldout": bool(heldout)})
    train = [r for r in rows if not r["heldout"]]
    held = [r for r in rows if r["heldout"]]
    keep = [_draw(train, cfg.max_pairs, rng), _draw(held, cfg.max_heldout_pairs, rng)]
    return pa.Table.from_pylist([r for part in keep for r in part], schema=PAIRS_SCHEMA)


def _draw(rows: list[dict], cap: int, rng: np.random.Generator) -> list[dict]:
    """At most `cap` rows, a seeded draw in their order."""
    if len(rows) <= cap:
        return rows
    return [rows[i] for i in np.sort(rng.choice(len(rows), cap, replace=False))]


def mark_trained(pairs: pa.Table, cfg: PreferConfig, seed: int) -> pa.Table:
    """A `trained` column: the seeded draw of the training pairs the DPO steps consume (steps x batch x
    accumulation x workers, one in local mode); held-out pairs never. The trainer would draw as many at random
    anyway; drawing them first means the reference log-probabilities are precomputed for those pairs only, not
    for all `max_pairs`."""
    used = cfg.steps * cfg.batch_size * cfg.grad_accum * max(1, cfg.num_workers)
    candidates = np.flatnonzero(~pairs.column("heldout").to_numpy(zero_copy_only=False))
    mask = np.zeros(len(pairs), dtype=bool)
    chosen = candidates if len(candidates) <= used else np.random.default_rng(seed).choice(candidates, used,
                                                                                          replace=False)
    mask[chosen] = True
    return pairs.append_column("trained", pa.array(mask))


def dpo_records(pairs: pa.Table) -> list[dict]:
    """trl's conversational preference format: the prompt's messages, one assistant turn per completion."""
    return [{"prompt": r["prompt"],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.to_pylist()]


# trl's per-step figures -> the names of their means over a DPO round in run_dpo's metrics
ROUND_MEANS = {"loss": "round_loss", "rewards/margins": "round_reward_margin",
               "rewards/accuracies": "round_reward_accuracy"}
# trl's evaluation of the held-out pairs after the round's last step -> run_dpo's names
HELDOUT = {"eval_loss": "heldout_loss", "eval_rewards/margins": "heldout_reward_margin",
           "eval_rewards/accuracies": "heldout_reward_accuracy"}


def heldout_figures(log_history: list[dict]) -> dict[str, float]:
    """The last evaluation's HELDOUT figures (none when the round had no held-out pair)."""
    evals = [e for e in log_history if "eval_loss" in e]
    return {name: float(evals[-1][key]) for key, name in HELDOUT.items() if evals and key in evals[-1]}


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

    from kka_ray.llm.dpo_forward import score_completions_only, share_prefixes
    from kka_ray.llm.hf import load_causal_lm

    class RoundSummary(TrainerCallback):
        """Adds the round's means (round_means), the held-out pairs' figures, the mean optimizer-step seconds and
        the setup seconds (reference precompute included) to the logged metrics that RayTrainReportCallback
        reports with the checkpoint. Both act on the one save, at the last step: after that step's log entry and
        the held-out evaluation (the Trainer evaluates before it saves), and this one runs first."""

        def __init__(self, setup_start: float):
            self.setup_start, self.times, self.setup = setup_start, [], 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.setup = time.time() - self.setup_start

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.time() - self.step_start)

        def on_save(self, args, state, control, **kwargs):
            state.log_history.append({**round_means(state.log_history), **heldout_figures(state.log_history),
                                      "step_seconds": float(np.mean(self.times)),
                                      "setup_seconds": self.setup, "bf16": float(args.bf16),
                                      "peak_rss_mb": peak_rss_mb()})

    class Curves(TrainerCallback):
        """trl's per-step logs (loss, reward margin and accuracy, ...) into the fit's MLflow run, if tracked."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            log_step(logs or {}, state.global_step)

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
    if cfg.share_prefix:
        share_prefixes(model)
    heldout = ray.get(config["heldout"])
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
            eval_strategy="steps" if heldout else "no", eval_steps=cfg.steps, per_device_eval_batch_size=cfg.batch_size,
            save_only_model=True, report_to="none", seed=config["seed"], data_seed=config["seed"],
            disable_tqdm=True, dataloader_num_workers=0, ddp_find_unused_parameters=False,
            precompute_ref_log_probs=cfg.precompute_ref, precompute_ref_batch_size=cfg.ref_batch_size,
        )
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(ray.get(config["pairs"])),
                             eval_dataset=Dataset.from_list(heldout) if heldout else None,
                             processing_class=tok, peft_config=lora,
                             callbacks=[RoundSummary(setup_start), Curves(), RayTrainReportCallback()])
        with fit_run(config), score_completions_only():
            prepare_trainer(trainer).train()


def split_pairs(pairs: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(the pairs to train on, the held-out ones): `trained` where marked, else every pair not held out."""
    def flags(name: str) -> np.ndarray | None:
        return np.array(pairs.column(name).to_pylist(), dtype=bool) if name in pairs.column_names else None

    held = flags("heldout")
    held = np.zeros(len(pairs), dtype=bool) if held is None else held
    train = flags("trained")
    train = ~held if train is None else train
    return pairs.filter(pa.array(train, pa.bool_())), pairs.filter(pa.array(held, pa.bool_()))


def run_dpo(pairs: pa.Table, lm: LMConfig, cfg: PreferConfig, *, seed: int, workdir: Path):
    """Fine-tune `lm` (base + its adapter, if any) on the pairs (those marked `trained` where the column is
    there; never the held-out ones, which are evaluated after the last step); returns (checkpoint with the
    adapter, metrics). In the metrics, `round_loss`, `round_reward_margin` and `round_reward_accuracy` are the
    means over all the round's steps, `heldout_loss`, `heldout_reward_margin` and `heldout_reward_accuracy` the
    held-out pairs' after it; trl's own keys (`loss`, `rewards/margins`, ...) are its last step's."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    pairs, heldout = split_pairs(pairs)
    if len(pairs) == 0:
        raise ValueError("DPO needs at least one preference pair (no hard or no easy anomaly this iteration)")
    trainer = trainer_cls()(
        dpo_loop_per_worker,
        train_loop_config={"prefer": cfg.model_dump(), "lm": lm.model_dump(), "seed": seed,
                           "pairs": ray.put(dpo_records(pairs)), "heldout": ray.put(dpo_records(heldout)),
                           **fit_tracking("dpo")},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=f"dpo-{uuid.uuid4().hex[:8]}", storage_path=str(Path(workdir).resolve()),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
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
