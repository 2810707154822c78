"""Fitted detector weights as safetensors: tensors and a JSON header, nothing that can run code when read (run
folders live on shared storage, so weights are never unpickled)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def write(path: str | Path, tensors: dict[str, torch.Tensor], fmt: str, meta: dict) -> Path:
    """`tensors` and `meta` (JSON values) to `path`, through a temporary file and a rename."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"format": fmt, "meta": json.dumps(meta)})
    tmp.replace(path)
    return path


def read(path: str | Path, fmt: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and meta of a file `write` made with format `fmt`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {fmt} weights there")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        if header.get("format") != fmt:
            raise ValueError(f"format {header.get('format')!r}, expected {fmt!r}")
        meta = json.loads(header["meta"])
    except (SafetensorError, ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not readable {fmt} weights ({e})") from None
    return tensors, meta

