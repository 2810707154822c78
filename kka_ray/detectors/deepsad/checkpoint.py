"""Deep SAD checkpoints as safetensors: tensors and a JSON header, nothing that can run code when read. Run
folders live on shared storage, so a checkpoint is never unpickled.

Convert a folder written before this format (deepsad.pt) once, if you trust where it came from:
    python jobs/convert_checkpoints.py RUN_FOLDER
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kka_ray.detectors.deepsad.networks import NetSpec

CHECKPOINT_FILE = "deepsad.safetensors"
LEGACY_FILE = "deepsad.pt"
FORMAT = "kka-deepsad-1"


def write(folder: str | Path, state_dict: dict, c: torch.Tensor, spec: NetSpec, pretrained: dict | None) -> Path:
    """folder/deepsad.safetensors: net.* (the encoder), c, pretrained.* (encoder after the autoencoder phase)."""
    tensors = {f"net.{k}": v for k, v in state_dict.items()} | {"c": c}
    tensors |= {f"pretrained.{k}": v for k, v in (pretrained or {}).items()}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    meta = {"format": FORMAT, "spec": json.dumps(asdict(spec)), "pretrained": str(pretrained is not None)}
    path = Path(folder) / CHECKPOINT_FILE
    save_file(tensors, str(path), metadata=meta)
    return path


def read(folder: str | Path) -> dict:
    """{"state_dict", "c", "spec", "pretrained"} of a checkpoint folder; a clear error for anything else."""
    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        if (folder / LEGACY_FILE).is_file():
            raise ValueError(f"{folder / LEGACY_FILE}: a Deep SAD checkpoint in the old pickle format, which is no "
                             f"longer read; if you trust its source, convert its run folder once with: python "
                             f"jobs/convert_checkpoints.py {folder}")
        raise FileNotFoundError(f"{path}: no Deep SAD checkpoint there")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        spec = json.loads(meta["spec"])
    except (SafetensorError, ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not a readable Deep SAD checkpoint ({e})") from None
    part = {p: {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(p + ".")} for p in ("net", "pretrained")}
    return {"state_dict": part["net"], "c": tensors["c"], "spec": spec,
            "pretrained": part["pretrained"] if meta.get("pretrained") == "True" else None}


def convert(root: str | Path) -> list[Path]:
    """Every deepsad.pt under root rewritten as deepsad.safetensors (tensors and plain values only are accepted:
    weights_only), the old file removed."""
    out = []
    for old in sorted(Path(root).rglob(LEGACY_FILE)):
        state = torch.load(old, map_location="cpu", weights_only=True)
        out.append(write(old.parent, state["state_dict"], state["c"], NetSpec(**state["spec"]), state["pretrained"]))
        old.unlink()
    return out

