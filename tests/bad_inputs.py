"""The catalogue of bad inputs (issue 15): what a user may hand the project by mistake, and the error that must
name it. Each case makes its bad input under a fresh folder and does what a user would do with it; the case
passes when the named exception is raised with a message matching `names`, and, where something was computed
before, `kept` confirms it is still there. Used by tests/test_bad_inputs.py and by jobs/bench_faults.py (which
records what the user sees)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from kka_ray.config import ConfigError, load_config


@dataclass(frozen=True)
class Case:
    id: str
    area: str  # config | dataset | model | adapter | run folder | generation | http | service
    given: str  # the bad input, in a user's words
    run: Callable[[Path], None]
    error: type[BaseException]
    names: str  # regex the message must match: the file, field or value at fault
    kept: Callable[[Path], bool] | None = None


def _kka(tmp: Path, text: str):
    from kka_ray.loop import KKAConfig

    (tmp / "run.yaml").write_text(text)
    return load_config(KKAConfig, tmp / "run.yaml")


def _load_kka(path_or_none, overrides=()):
    from kka_ray.loop import KKAConfig

    return load_config(KKAConfig, path_or_none, list(overrides))


def _dataset(name: str, **options):
    from kka_ray.data import build_dataset

    return build_dataset(name, options=options)


def _classes(tmp: Path) -> None:
    from kka_ray.data.task import resolve_classes

    resolve_classes(["shrit"], ("shirt", "coat"), "fashion_mnist")


def _resume_parent(tmp: Path) -> None:
    from kka_ray.loop import load_run_config

    load_run_config(str(tmp), [])


def _idx(root: Path, images: bytes, labels: bytes) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        (root / f"{split}-images-idx3-ubyte").write_bytes(images)
        (root / f"{split}-labels-idx1-ubyte").write_bytes(labels)


def _header(dims: int, *shape: int) -> bytes:
    return bytes([0, 0, 8, dims]) + b"".join(n.to_bytes(4, "big") for n in shape)


def _fmnist(root: Path):
    from kka_ray.data import build_dataset

    return build_dataset("fashion_mnist", root=root).load("train")


def _folder(tmp: Path, files: dict[str, bytes], captions: str | None = None):
    from PIL import Image

    from kka_ray.data import build_dataset

    for rel, data in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        if data == b"png":
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / rel)
        else:
            (tmp / rel).write_bytes(data)
    if captions is not None:
        (tmp / "captions.csv").write_text(captions)
    return build_dataset("image_folder", root=tmp).load("train")


def _run_folder(tmp: Path) -> Path:
    """A run folder with a finished iteration's files, as a crash would leave them."""
    from kka_ray.loop import KKAConfig
    from kka_ray.store import RunStore

    run = tmp / "runs" / "r"
    store = RunStore(str(run))
    store.write_text("config.yaml", yaml.safe_dump(KKAConfig(name="r", run_dir=str(tmp / "runs"),
                                                             normal_classes=["shirt"]).model_dump(mode="json")))
    store.write_table("iter_0/anomalies.parquet", pa.table({"sentence": ["a red hat"]}))
    store.write_json("state.json", {"completed": 0, "rows": [{"iteration": 0, "next_adapter": "iter_0/adapter"}],
                                    "baseline": {}})
    return run


def _unchanged(tmp: Path) -> bool:
    return (tmp / "runs/r/iter_0/anomalies.parquet").is_file() and (tmp / "runs/r/config.yaml").is_file()


def _resume(tmp: Path, overrides: list[str]) -> None:
    from kka_ray.loop import load_run_config

    load_run_config(str(_run_folder(tmp)), overrides)


def _changed_config(tmp: Path) -> None:
    from kka_ray.loop import KKAConfig
    from kka_ray.loop_bench import check_same_run

    run = _run_folder(tmp)
    check_same_run(str(run), KKAConfig(name="r", run_dir=str(tmp / "runs"), normal_classes=["shirt"], seed=7))


def _state(tmp: Path, text: bytes) -> None:
    from kka_ray.store import RunStore

    run = _run_folder(tmp)
    (run / "state.json").write_bytes(text)
    RunStore(str(run)).read_state("state.json")


def _parquet(tmp: Path) -> None:
    from kka_ray.store import RunStore

    run = _run_folder(tmp)
    data = (run / "iter_0/anomalies.parquet").read_bytes()
    (run / "iter_0/anomalies.parquet").write_bytes(data[: len(data) // 2])
    RunStore(str(run)).read_table("iter_0/anomalies.parquet")


def _locked(tmp: Path) -> None:
    import os

    from kka_ray.loop import KKAConfig, open_run

    run = _run_folder(tmp)
    (run / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "since": 0}))
    open_run(KKAConfig(name="r", run_dir=str(tmp / "runs"), normal_classes=["shirt"]), resume=True)


def _checkpoint(tmp: Path, data: bytes) -> None:
    from kka_ray.detectors.deepsad.train import load_checkpoint

    folder = tmp / "evaluator"
    folder.mkdir()
    (folder / "deepsad.safetensors").write_bytes(data)
    load_checkpoint(folder)


def _legacy_checkpoint(tmp: Path) -> None:
    import torch

    from kka_ray.detectors.deepsad.train import load_checkpoint

    folder = tmp / "evaluator"
    folder.mkdir()
    torch.save({"state_dict": {}, "c": torch.zeros(2)}, folder / "deepsad.pt")
    load_checkpoint(folder)


def _adapter(tmp: Path, files: dict[str, str]) -> None:
    from kka_ray.llm.hf import local_adapter

    folder = tmp / "adapter"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    local_adapter(str(folder))


def _lm_model(tmp: Path) -> None:
    from kka_ray.llm import LMConfig
    from kka_ray.llm.hf import model_source

    model_source(LMConfig(model=str(tmp / "no-such-model")))


def _render_model(tmp: Path) -> None:
    from kka_ray.render import RenderConfig, resolve_render

    resolve_render(RenderConfig(model=str(tmp / "no-such-pipeline")), "fashion_mnist")


def _prior(name: str, allow: bool = False) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from kka_ray.render import RenderConfig, resolve_render

        resolve_render(RenderConfig(prior=name, allow_prior_overlap=allow), "fashion_mnist")

    return run


def _lm_output(texts: list) -> Callable[[Path], None]:
    """Garbage from the language model: every line is rejected with its reason, and the loop's rule for an
    iteration without one kept line stops with the count by reason (loop.run_iteration)."""

    def run(tmp: Path) -> None:
        from kka_ray.text.clean import CleanConfig, clean_lines

        rows = [{"row_id": i, "text": t} for i, t in enumerate(texts)]
        lines = clean_lines(rows, ("shirt",), (), (), CleanConfig(similarity_threshold=None))
        kept = [x for x in lines if not x["reason"]]
        if not kept:
            reasons = sorted({x["reason"] for x in lines})
            raise RuntimeError(f"every generated line was rejected ({', '.join(reasons)})")

    return run


def _guard(headers: dict[str, str], chunks: list[bytes], path: str = "/v1/anomalies") -> Callable[[Path], None]:
    """A request through the service's ASGI guard; its refusal is raised as an error carrying the status."""

    def run(tmp: Path) -> None:
        from kka_ray.serve.guard import Guard, Policy, digest

        reached = []

        async def app(scope, receive, send):
            reached.append(path)

        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(m):
            sent.append(m)

        Guard.install(Policy(digest("the-service-token-0123"), max_body_bytes=1024))
        scope = {"type": "http", "path": path, "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        asyncio.run(Guard(app)(scope, receive, send))
        if not reached:
            raise PermissionError(f"HTTP {sent[0]['status']}: {json.loads(sent[1]['body'])['detail']}")

    return run


def _service(env: dict[str, str], host: str = "127.0.0.1", mode: str = "token") -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        import os

        from kka_ray.serve.config import AuthConfig
        from kka_ray.serve.guard import token_digest

        old = {k: os.environ.get(k) for k in env}
        os.environ.update({k: v for k, v in env.items() if v is not None})
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
        try:
            token_digest(AuthConfig(mode=mode, token_env="KKA_CATALOGUE_TOKEN"), host)
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    return run


def _cifar_pickle(tmp: Path) -> None:
    import pickle

    from kka_ray.data import build_dataset

    folder = tmp / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps({"x": print}))  # a global that would run on load
    build_dataset("cifar100", root=tmp).load("train")


def _serve_request(body: dict) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from kka_ray.serve.schemas import AnomalyRequest

        AnomalyRequest.model_validate(body)

    return run


CASES = [
    # configs
    Case("config-unknown-key", "config", "a misspelt section (`evaluater:`) in a run's YAML",
         lambda t: _kka(t, "evaluater: {epochs: 3}\n"), ConfigError, "evaluater"),
    Case("config-wrong-type", "config", "`seed: abc`", lambda t: _kka(t, "seed: abc\n"), ConfigError, "seed"),
    Case("config-set-unknown", "config", "`--set generate.lm.temprature=0.5`",
         lambda t: _load_kka(None, ["generate.lm.temprature=0.5"]), ConfigError, "temprature"),
    Case("config-missing-file", "config", "`--config configs/kka/dmeo.yaml`",
         lambda t: _load_kka(t / "dmeo.yaml"), (ConfigError, FileNotFoundError), "dmeo.yaml"),
    Case("config-bad-yaml", "config", "a YAML file with a tab-broken mapping",
         lambda t: _kka(t, "seed: 1\n  name: [x\n"), ConfigError, "run.yaml"),
    Case("dataset-options-typo", "config", "`dataset.options: {protcol: fine}` for CIFAR-100",
         lambda t: _dataset("cifar100", protcol="fine"), ValueError, "protcol.*accepts protocol, download"),
    Case("dataset-unknown", "config", "`dataset.name: fasion_mnist`",
         lambda t: _dataset("fasion_mnist"), (KeyError, ValueError), "fasion_mnist"),
    Case("normal-class-unknown", "config", "`normal_classes: [shrit]`",
         _classes, ValueError, "shrit.*shirt, coat"),
    # datasets
    Case("idx-truncated", "dataset", "a Fashion-MNIST image file cut short by a failed copy",
         lambda t: (_idx(t, _header(3, 2, 28, 28) + bytes(100), _header(1, 2) + bytes(2)), _fmnist(t)),
         ValueError, "train-images-idx3-ubyte: truncated"),
    Case("idx-not-idx", "dataset", "an HTML error page saved as the label file",
         lambda t: (_idx(t, _header(3, 1, 28, 28) + bytes(784), b"<html>404</html>"), _fmnist(t)),
         ValueError, "labels-idx1-ubyte: not a uint8 IDX"),
    Case("idx-gzip-cut", "dataset", "a gzipped IDX file cut short",
         lambda t: (t.mkdir(exist_ok=True), [(t / f"{s}-{k}-idx{d}-ubyte.gz").write_bytes(
             gzip.compress(_header(d, 1, 28, 28)[: 4 + 4 * d] + bytes(784 if d == 3 else 1))[:30])
             for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))], _fmnist(t)),
         ValueError, "unreadable IDX file"),
    Case("image-folder-garbage-file", "dataset", "a text file named cat.png among the images",
         lambda t: _folder(t, {"train/cat/a.png": b"png", "train/cat/b.png": b"not an image",
                               "test/cat/a.png": b"png"}), ValueError, "cannot read image .*b.png"),
    Case("image-folder-no-train", "dataset", "an image folder without train/",
         lambda t: _folder(t, {"test/cat/a.png": b"png"}), FileNotFoundError, "train"),
    Case("captions-bad-header", "dataset", "captions.csv with the header `file,text`",
         lambda t: _folder(t, {"train/cat/a.png": b"png", "test/cat/a.png": b"png"}, "file,text\na,b\n"),
         ValueError, "captions.csv needs the header `path,caption`"),
    Case("captions-unknown-file", "dataset", "captions.csv naming train/cat/typo.png",
         lambda t: _folder(t, {"train/cat/a.png": b"png", "test/cat/a.png": b"png"},
                           "path,caption\ntrain/cat/typo.png,a cat\n"), ValueError, "typo.png"),
    Case("cifar-pickle-code", "dataset", "a CIFAR-100 file whose pickle calls a function",
         _cifar_pickle, ValueError, "not a CIFAR-100 python file.*print"),
    # models
    Case("lm-model-missing", "model", "`generate.lm.model: /models/SmolLM2` that is not there",
         _lm_model, FileNotFoundError, "generate.lm.model .*no-such-model"),
    Case("render-model-missing", "model", "`render.model: ./sd-turbo` that is not there",
         _render_model, FileNotFoundError, "render.model .*no-such-pipeline"),
    Case("prior-unknown", "model", "`render.prior: genral`", _prior("genral"), FileNotFoundError,
         "render.prior 'genral'.*shipped: "),
    Case("prior-overlap", "model", "`render.prior: in-domain` for a Fashion-MNIST task",
         _prior("in-domain"), ConfigError, "trained on 'fashion_mnist'.*allow_prior_overlap"),
    # adapters
    Case("adapter-missing-config", "adapter", "an adapter folder without adapter_config.json",
         lambda t: _adapter(t, {"adapter_model.safetensors": "x"}), FileNotFoundError, "adapter_config.json"),
    # run folders
    Case("resume-not-a-run", "run folder", "`--resume runs/` (the parent folder)",
         _resume_parent, ConfigError, "no config.yaml"),
    Case("resume-changed-field", "run folder", "`--resume R --set evaluator.epochs=3`",
         lambda t: _resume(t, ["evaluator.epochs=3"]), ConfigError, "evaluator.epochs.*cannot change",
         _unchanged),
    Case("resume-changed-config", "run folder", "a benchmark rerun over a folder made with seed 0, now seed 7",
         _changed_config, ConfigError, "seed: 0 -> 7", _unchanged),
    Case("state-corrupt", "run folder", "state.json cut off by a full disk, no previous copy",
         lambda t: _state(t, b'{"completed": 0, "ro'), ValueError, "state.json is unreadable", _unchanged),
    Case("parquet-truncated", "run folder", "an anomalies.parquet cut in half",
         _parquet, ValueError, "anomalies.parquet: not a readable Parquet table"),
    Case("run-locked", "run folder", "a second driver on a folder whose driver is running",
         _locked, ConfigError, "locked by pid", _unchanged),
    Case("checkpoint-corrupt", "run folder", "a theta_C checkpoint of random bytes",
         lambda t: _checkpoint(t, b"\x08" + bytes(7) + b"{garbage"), ValueError,
         "deepsad.safetensors: not a readable Deep SAD checkpoint"),
    Case("checkpoint-pickle", "run folder", "a run folder from before, with deepsad.pt (a pickle)",
         _legacy_checkpoint, ValueError, "python jobs/convert_checkpoints.py"),
    # language-model output
    Case("lm-garbage", "generation", "the model answers with blank lines and punctuation only",
         _lm_output(["", "  \n ...", "!!!\n???"]), RuntimeError, "every generated line was rejected.*empty"),
    Case("lm-non-text", "generation", "an engine row whose text is not a string (a failed request)",
         _lm_output([None, 42]), RuntimeError, "rejected.*malformed"),
    # HTTP requests and the service
    Case("http-malformed-json-no-token", "http", "POST `{not json` without a token",
         _guard({}, [b"{not json"]), PermissionError, "HTTP 401"),
    Case("http-docs-no-token", "http", "GET /docs without a token", _guard({}, [b""], "/docs"),
         PermissionError, "HTTP 401"),
    Case("http-oversized", "http", "a 2 KiB body where 1 KiB is allowed (declared)",
         _guard({"authorization": "Bearer the-service-token-0123", "content-length": "2048"}, [bytes(2048)]),
         PermissionError, "HTTP 413: request body over 1024 bytes"),
    Case("http-oversized-chunked", "http", "a chunked body that grows past the limit",
         _guard({"authorization": "Bearer the-service-token-0123"}, [bytes(600), bytes(600)]),
         PermissionError, "HTTP 413"),
    Case("http-unknown-field", "http", "a request with `colour: red`",
         _serve_request({"normal_descriptions": ["a shirt"], "colour": "red"}), ValueError, "colour"),
    Case("service-no-token", "service", "starting the service with KKA_SERVE_TOKEN unset",
         _service({"KKA_CATALOGUE_TOKEN": None}), ConfigError, "KKA_CATALOGUE_TOKEN is not set"),
    Case("service-empty-token", "service", "starting it with an empty token variable",
         _service({"KKA_CATALOGUE_TOKEN": ""}), ConfigError, "KKA_CATALOGUE_TOKEN is empty"),
    Case("service-open-on-network", "service", "auth.mode none on 0.0.0.0",
         _service({}, host="0.0.0.0", mode="none"), ConfigError, "allow_open"),
]
