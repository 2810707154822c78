"""Typed run configuration: YAML files in configs/, `--set a.b=value` overrides, errors that name the field."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kka_ray.precision import BF16_DESCRIPTION, Bf16

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, the field and the value."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# How every Ray Train fit's `num_workers` reads 0 (kka_ray/runtime.py: trainer_cls).
LOCAL_MODE = ("; 0 = Ray Train's local mode: the fit runs in the calling process, without worker actors, restarts "
              "or DDP. It saves Ray Train's start, 4-6 s a fit on 2 cores (perf-cpu-amx: the demo's Deep SAD fit "
              "0.83 of a bare loop on a worker, 1.07 in local mode; the benchmark's 0.91 and 1.00)")


class RayConfig(Strict):
    address: str | None = Field(None, description="Cluster to join ('auto', 'ray://host:10001'); "
                                "RAY_ADDRESS is used when unset; with neither a fresh local Ray starts "
                                "('auto' joins a local `ray start` head)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")
    object_store_mb: int = Field(512, ge=64, description="Object store of a local Ray, MiB")


class DatasetConfig(Strict):
    name: str = Field("fashion_mnist", description="Registered dataset name")
    root: str | None = Field(None, description="Local root; None = the loader's default location")
    image_size: int | None = Field(None, ge=8, description="Resize to a square of this side; None = native")
    options: dict[str, Any] = Field(default_factory=dict, description="Loader options (e.g. cifar100 protocol)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from kka_ray.data import DATASETS

        return DATASETS.check(v)


class DeepSADConfig(Strict):
    """Deep SAD (Ruff et al. 2020); with no labelled anomalies it is Deep SVDD."""

    name: Literal["deepsad"] = Field("deepsad", description="Detector; one config class per registered detector")
    net: str = Field("auto", description="Encoder preset: auto (by image size), lenet28, lenet32, conv64")
    rep_dim: int | None = Field(None, ge=2, description="Embedding size; None = the preset's")
    eta: float = Field(1.0, gt=0, description="Weight of the labelled terms of the loss")
    eps: float = Field(1e-6, gt=0, description="Keeps the inverse-distance anomaly term finite")
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(150, ge=1)
    lr_milestones: list[int] = Field(default_factory=lambda: [50], description="Epochs where lr drops 10x")
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.5e-6, ge=0)
    pretrain: bool = Field(True, description="Autoencoder pretraining of the encoder first")
    ae_epochs: int = Field(150, ge=0)
    ae_lr: float = Field(1e-4, gt=0)
    ae_lr_milestones: list[int] = Field(default_factory=lambda: [50])
    ae_weight_decay: float = Field(0.5e-3, ge=0)
    bf16: Bf16 = Field("auto", description=BF16_DESCRIPTION + "; losses and c stay fp32")
    num_workers: int = Field(1, ge=0, description="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)" + LOCAL_MODE)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="Threads per worker; None = cpus_per_worker")
    max_failures: int = Field(1, ge=0, description="Ray Train restarts of a fit whose worker died (a preempted "
                              "node, a kill); each resumes from the last restart checkpoint")
    checkpoint_every: int = Field(5, ge=0, description="Epochs between restart checkpoints of either phase (0: "
                                  "none; a restart then begins the fit again). Resumed fits equal undisturbed ones")
    score_actors: int = Field(1, ge=1, description="Ray Data workers that score with the checkpoint in parallel "
                              "(actors on GPUs, tasks on CPUs)")
    score_batch_size: int = Field(1024, ge=1)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """`a.b=value` strings, the value parsed as YAML (so 3, 1e-4, [1,2], true work)."""
    out = copy.deepcopy(tree)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set_dotted(out, key.strip(), value)
    return out


def _errors(err: ValidationError, outer: tuple = ()):
    """Every error with its full location; a config validated inside a validator (a registry's config chosen
    by name) contributes its own errors, under the field that holds it."""
    for e in err.errors():
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, ValidationError):
            yield from _errors(inner, outer + tuple(e["loc"]))
        else:
            yield {**e, "loc": outer + tuple(e["loc"])}


def describe_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in _errors(err):
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {field}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    if overrides:
        tree = apply_overrides(tree, overrides)
        source += " + overrides"
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, source)) from None


def save_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write the fully resolved configuration (defaults included) so that it alone reproduces the run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_ABSENT = object()


def config_diff(saved: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys (nested dicts flattened) whose values differ, a key on one side only included; keys that
    start with one of the `ignore` prefixes are left out."""
    old, new = _flatten(saved), _flatten(current)
    keys = [k for k in old if k not in new] + list(new)  # saved order, then current
    return [k for k in dict.fromkeys(keys) if not k.startswith(tuple(ignore))
            and old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def describe_diff(saved: dict, current: dict, keys: list[str], limit: int = 8) -> str:
    """`key: saved -> current` for the first `limit` differing keys, for an error message."""
    old, new = _flatten(saved), _flatten(current)

    def show(tree: dict, key: str) -> str:
        return repr(tree[key]) if key in tree else "(absent)"

    shown = [f"{k}: {show(old, k)} -> {show(new, k)}" for k in keys[:limit]]
    more = [f"... and {len(keys) - limit} more"] if len(keys) > limit else []
    return "; ".join(shown + more)
