"""Stage 2 (Eq. 3): representative normal descriptions -> prompts -> language-model pool -> cleaned anomaly
descriptions x_a^t, each with its provenance; every dropped line goes to a rejects table with its reason.

The stages are lazy Ray Datasets: `prompt_dataset` -> `LMBackend.apply` -> `Cleaner`, so the render stage can
stream from them without anything being materialised in between.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator
from ray.data import ActorPoolStrategy

from kka_ray.actor_map import driver_blocks
from kka_ray.config import Strict
from kka_ray.data.task import OneClassTask
from kka_ray.llm import LMConfig, build_backend
from kka_ray.resources import peak_rss_mb
from kka_ray.text.clean import CleanConfig, clean_lines, drop_later_copies, line_key

if TYPE_CHECKING:  # only named in annotations: selecting (scikit-learn) is not loaded in the actors
    from kka_ray.stages.select import Representative

PAPER_TEMPLATE = ("Please generate new sentences that describe {domain}. The sentences should follow the exact "
                  "structure and style of the example below: {example}")


class FewShot(Strict):
    """A worked example shown to the model before the real prompt (another domain, so it leaks no content)."""

    domain: str
    example: str
    answer: str


# Small instruction-tuned models ignore the bare paper prompt; two worked answers in another domain teach the
# output format (one caption per line, same structure) without suggesting any item of the task's domain.
DEFAULT_SHOTS = [
    FewShot(domain="animals", example="a photo of a cat",
            answer="a photo of a horse\na photo of a rabbit\na photo of a fox\na photo of a cow\n"
                   "a photo of a squirrel"),
    FewShot(domain="vehicles", example="a red car parked on the street",
            answer="a blue bus parked on the street\na white van parked on the road\na green tractor parked in the "
                   "field\na yellow taxi parked at the corner\na black motorbike parked by the wall"),
]


class GenerateConfig(Strict):
    template: str = Field(PAPER_TEMPLATE, description="User prompt; must contain {domain} and {example}")
    domain: str | None = Field(None, description="What the data show, e.g. 'clothing items'; None = the dataset's")
    few_shot: list[FewShot] = Field(default_factory=lambda: list(DEFAULT_SHOTS),
                                    description="Worked examples before the prompt ([] = the paper's bare prompt)")
    system_prompt: str | None = Field(None, description="Optional system message")
    samples_per_representative: int = Field(40, ge=1, description="Sampled completions per representative")
    max_normal_descriptions: int = Field(1000, ge=1, description="Normal descriptions compared against (sampled)")
    seed: int | None = Field(None, description="Seeds the rows' sampling seeds and the sample of normal "
                             "descriptions; None = the run's seed in a KKA run, 0 where there is no run (the Serve "
                             "endpoint, the knowledge job)")
    lm: LMConfig = Field(default_factory=LMConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)

    @field_validator("template")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        for key in ("{domain}", "{example}"):
            if key not in v:
                raise ValueError(f"template must contain {key}")
        return v


@dataclass(frozen=True)
class NormalContext:
    """What cleaning must know about the normal side of the task."""

    task: str
    domain: str
    normal_names: tuple[str, ...]
    other_names: tuple[str, ...]
    normal_descriptions: tuple[str, ...]


def _seed(cfg: GenerateConfig) -> int:
    return 0 if cfg.seed is None else cfg.seed  # None reaches here only outside a KKA run


def normal_context(task: OneClassTask, cfg: GenerateConfig) -> NormalContext:
    """Names and descriptions of the normal side, and the other classes' names (for the t-shirt/shirt rule)."""
    texts = sorted({d for descs in task.train_normal.descriptions for d in descs})
    if len(texts) > cfg.max_normal_descriptions:
        rng = np.random.default_rng(_seed(cfg))
        texts = sorted(rng.choice(texts, cfg.max_normal_descriptions, replace=False))
    others = tuple(n for n in task.test.class_names if n not in task.normal_classes)
    return NormalContext(task=task.name, domain=cfg.domain or task.domain, normal_names=task.normal_classes,
                         other_names=others, normal_descriptions=tuple(texts))


def messages_for(cfg: GenerateConfig, domain: str, example: str) -> list[dict]:
    msgs = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    for shot in cfg.few_shot:
        msgs += [{"role": "user", "content": cfg.template.format(domain=shot.domain, example=shot.example)},
                 {"role": "assistant", "content": shot.answer}]
    return msgs + [{"role": "user", "content": cfg.template.format(domain=domain, example=example)}]


def row_seeds(seed: int, iteration: int, n: int) -> np.ndarray:
    """Independent per-row seeds from (run seed, iteration): reruns repeat, iterations differ."""
    return np.random.SeedSequence([seed, iteration]).generate_state(n, dtype=np.uint32).astype(np.int64)


def prompt_table(reps: Sequence[Representative], ctx: NormalContext, cfg: GenerateConfig, iteration: int) -> pa.Table:
    """One row per (representative, sample): the prompt, its messages, its seed and the provenance."""
    n = cfg.samples_per_representative
    rows = [(rep, j) for rep in reps for j in range(n)]
    seeds = row_seeds(_seed(cfg), iteration, len(rows))
    messages = {rep.cluster: messages_for(cfg, ctx.domain, rep.description) for rep in reps}
    return pa.table({
        "row_id": np.arange(len(rows)),
        "task": [ctx.task] * len(rows),
        "iteration": [iteration] * len(rows),
        "cluster": [rep.cluster for rep, _ in rows],
        "representative_id": [rep.sample_id for rep, _ in rows],
        "representative_text": [rep.description for rep, _ in rows],
        "prompt": [messages[rep.cluster][-1]["content"] for rep, _ in rows],
        "messages": [messages[rep.cluster] for rep, _ in rows],
        "seed": seeds,
    })


def prompt_dataset(table: pa.Table, cfg: GenerateConfig):
    """A Ray Dataset of one block per LM batch: every batch is full (blocks of 1.5 batches gave batches of 32,
    16, 32, 16 on the demo, each as slow per step as a full one), and every actor of the pool gets work."""
    return driver_blocks(table, max(1, -(-len(table) // cfg.lm.batch_size)))


class Cleaner:
    """Ray Data actor (pool of one: duplicates are judged against everything kept so far in the stream).

    Turns each generated row into one row per sentence, a row's lines in their order; kept lines have an empty
    `reason`. Rows arrive in whatever order the LM pool finishes them, but the copy of a line to keep is the first
    in generation order: a line is held back as a duplicate only when a copy was kept in an earlier row (or earlier
    in its row), and a later copy that arrived first is rejected afterwards, by `drop_later_copies` on the whole
    stream in row_id order.
    """

    def __init__(self, ctx: NormalContext, cfg: dict, provenance: dict):
        import torch

        from kka_ray.text.encoder import SentenceEncoder

        torch.set_num_threads(1)

        self.ctx, self.cfg, self.provenance = ctx, CleanConfig(**cfg), provenance
        self.encoder = SentenceEncoder() if self.cfg.similarity_threshold is not None else None
        self.first_rows: dict[str, int] = {}  # line_key -> the smallest row_id of a kept copy

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        start = time.time()
        batch = batch.sort_values("row_id", kind="stable")  # within the call, a copy is judged after earlier rows
        rows = batch.rename(columns={"generated_text": "text"}).assign(
            truncated=batch["num_generated_tokens"] >= self.provenance["max_new_tokens"]).to_dict("records")
        # Copies kept before this batch's first row; the pool's blocks are row ranges, so no other batch kept one
        # inside this batch's range (were it so, the final pass would settle it).
        first = batch["row_id"].min()
        earlier = {key for key, row in self.first_rows.items() if row < first}
        lines = clean_lines(rows, self.ctx.normal_names, self.ctx.other_names, self.ctx.normal_descriptions,
                            self.cfg, self.encoder, kept_keys=earlier)
        for line in lines:
            if line["reason"] == "":
                key = line_key(line["sentence"])
                self.first_rows[key] = min(self.first_rows.get(key, line["row_id"]), line["row_id"])
        return pd.DataFrame(lines).assign(
            **self.provenance, clean_start=start, clean_end=time.time(), clean_peak_rss_mb=peak_rss_mb())


def description_stream(reps: Sequence[Representative], ctx: NormalContext, cfg: GenerateConfig, iteration: int):
    """The lazy pipeline prompts -> LM pool -> cleaner: one row per sentence, `reason` empty when kept."""
    backend = build_backend(cfg.lm)
    lm = cfg.lm
    provenance = {"model": backend.model_id(), "adapter": lm.adapter or "", "backend": lm.backend,
                  "temperature": lm.temperature, "top_p": lm.top_p, "max_new_tokens": lm.max_new_tokens}
    generated = backend.apply(prompt_dataset(prompt_table(reps, ctx, cfg, iteration), cfg))
    return generated.map_batches(
        Cleaner,
        fn_constructor_kwargs={"ctx": ctx, "cfg": cfg.clean.model_dump(), "provenance": provenance},
        compute=ActorPoolStrategy(size=1),
        batch_size=None,
        batch_format="pandas",
        # MiniLM on a few sentences at a time, one thread. It asks for no CPU so that it can always be placed:
        # with a CPU share it could wait forever behind a render pool that took the node's CPUs first.
        num_cpus=0,
        max_restarts=cfg.lm.max_restarts,  # a restarted cleaner forgets its kept lines: the final pass settles them
        max_task_retries=-1,  # until the actor is dead for good (actor_map.pool_map says why)
    )


@dataclass
class GenerationResult:
    descriptions: pa.Table  # kept x_a^t with provenance
    rejects: pa.Table  # dropped lines with `reason`
    stats: dict[str, float]


def generation_stats(lines: pa.Table, wall_seconds: float) -> dict[str, float]:
    """Counts by reason and throughput; tokens are counted once per generated row, not per sentence."""
    df = lines.select([c for c in ("row_id", "num_generated_tokens", "batch_start", "batch_end", "reason")
                       if c in lines.column_names]).to_pandas()
    per_row = df.drop_duplicates("row_id")
    tokens = float(per_row["num_generated_tokens"].sum())
    stats = {"completions": len(per_row), "lines": len(df), "kept": int((df["reason"] == "").sum()),
             "tokens": tokens, "seconds": wall_seconds, "tokens_per_s_wall": tokens / wall_seconds}
    if "batch_start" in df:  # busy span of the pool: from the first batch's start to the last batch's end
        span = float(per_row["batch_end"].max() - per_row["batch_start"].min())
        stats["tokens_per_s"] = tokens / span
    for reason, n in df.loc[df["reason"] != "", "reason"].value_counts().items():
        stats[f"rejected_{reason}"] = int(n)
    return stats


# Columns the stream's actors add only to measure the stages; they go to the stats, not to the tables.
COST_COLUMNS = ("lm_peak_rss_mb", "clean_start", "clean_end", "clean_peak_rss_mb", "render_peak_rss_mb")
# stage -> (start column, end column, what a row counts, peak-memory column)
_STAGES = {"generate": ("batch_start", "batch_end", "completions", "lm_peak_rss_mb"),
           "clean": ("clean_start", "clean_end", "lines", "clean_peak_rss_mb"),
           "render": ("render_start", "render_end", "images", "render_peak_rss_mb")}


def stream_costs(columns: dict[str, np.ndarray]) -> dict[str, float]:
    """Per streaming stage: busy seconds (the sum of its batches' durations), rows per busy second, and the
    peak RSS of its actor processes, from the timing columns the actors add to every row."""
    rows = {"completions": len(np.unique(columns["row_id"])), "lines": len(columns["row_id"]),
            "images": int(np.asarray(columns.get("rendered", [])).astype(bool).sum())}
    out: dict[str, float] = {}
    for stage, (begin, end, unit, rss) in _STAGES.items():
        if begin not in columns:
            continue
        spans = np.unique(np.stack([columns[begin], columns[end]], axis=1).astype(np.float64), axis=0)
        busy = float((spans[:, 1] - spans[:, 0]).sum())
        out[f"{stage}_seconds"] = busy
        out[f"{stage}_rows_per_s"] = rows[unit] / busy if busy > 0 else 0.0
        if rss in columns:
            out[f"peak_rss_mb_{stage}"] = float(np.max(columns[rss]))
    return out


def generate_descriptions(reps, ctx: NormalContext, cfg: GenerateConfig, iteration: int = 0) -> GenerationResult:
    """Run the stream to the end and split kept from rejected lines."""
    start = time.time()
    refs = description_stream(reps, ctx, cfg, iteration).to_arrow_refs()
    # Blocks arrive in whatever order the pool finishes them; a stable sort restores generation order.
    lines = pa.concat_tables(ray.get(refs), promote_options="permissive").sort_by("row_id")
    # Later copies of a kept line that arrived before the first one are duplicates too.
    reasons = drop_later_copies(*(lines.column(c).to_pylist() for c in ("row_id", "sentence", "reason")))
    lines = lines.set_column(lines.column_names.index("reason"), "reason", pa.array(reasons, pa.string()))
    costs = [c for c in COST_COLUMNS if c in lines.column_names]
    stats = generation_stats(lines, time.time() - start) | stream_costs(
        {c: lines.column(c).to_numpy() for c in ("row_id", "batch_start", "batch_end", *costs)
         if c in lines.column_names})
    lines = lines.drop_columns(costs)
    kept_mask = pc.equal(lines.column("reason"), "")
    return GenerationResult(lines.filter(kept_mask).drop_columns(["reason"]),
                            lines.filter(pc.invert(kept_mask)), stats)
