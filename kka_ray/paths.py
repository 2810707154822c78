"""Where offline assets live: `KKA_ASSETS`, else `.assets/` at the repository root (made by the set-up)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    return Path(os.environ.get("KKA_ASSETS", REPO_ROOT / ".assets"))


def model_location(value: str, field: str) -> str:
    """A model named by a path must be a folder here; anything else is a hub id, left to the hub client (which
    names it when it cannot be fetched). Checked where a run starts, so a typo costs no finished work."""
    path = Path(value).expanduser()
    if value.startswith(("/", ".", "~")) or path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{field} {value}: no such model folder (a local path; a hub id has the form "
                                    "org/name)")
        return str(path)
    return value
