"""Where offline assets live: `KKA_ASSETS`, else `.assets/` at the repository root (made by the set-up)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    return Path(os.environ.get("KKA_ASSETS", REPO_ROOT / ".assets"))
