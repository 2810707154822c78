"""Figures a person would rather look at: anomaly grids (the paper's Figure 3) and per-iteration curves."""

from __future__ import annotations

import io
import textwrap
import warnings

import numpy as np
import pyarrow as pa


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # generated text may hold characters the font lacks; they show as boxes
        warnings.filterwarnings("ignore", "Glyph .* missing")
        fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return buf.getvalue()


def anomaly_grid(anomalies: pa.Table, n: int, title: str, per_row: int = 8) -> bytes:
    """The first `n` anomalies with their descriptions; frame red = hard, blue = easy (when judged)."""
    n = min(n, len(anomalies))
    chunks = [c.to_numpy_ndarray() for c in anomalies.slice(0, n).column("image").chunks if len(c)]
    # None of them (an iteration without a hard anomaly): an empty grid under its title says so.
    images = np.concatenate(chunks) if chunks else np.zeros((0, 1, 1, 1), np.uint8)
    hard = anomalies.column("hard").to_pylist()[:n] if "hard" in anomalies.column_names else None
    return image_grid(images, anomalies.column("sentence").to_pylist()[:n], title, per_row, hard)


def image_grid(images: np.ndarray, captions: list[str], title: str, per_row: int = 8,
               hard: list[bool] | None = None) -> bytes:
    """Images with their captions; with `hard`, a frame red = hard, blue = easy."""
    plt = _plt()
    n = len(images)
    rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.5, rows * 1.9), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title("\n".join(textwrap.wrap(captions[i], 22)[:3]), fontsize=6)
        if hard is not None and hard[i] is not None:
            for side in ax.spines.values():
                side.set_edgecolor("red" if hard[i] else "tab:blue")
                side.set_linewidth(2.5)
    framed = hard is not None and n > 0 and hard[0] is not None
    fig.suptitle(title + ("  (frame: red = hard, blue = easy)" if framed else ""), fontsize=9)
    fig.tight_layout()
    return _png(fig)


def iteration_curves(iterations: list[int], auroc: list[float], hard_share: list[float],
                     baseline: float | None, title: str) -> bytes:
    """Test AUROC of SAD + KKA(t) and the hard share of A_t against t (the paper's Table III as a plot)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    a.plot(iterations, auroc, "o-", label="SAD + KKA(t)")
    if baseline is not None:
        a.axhline(baseline, color="grey", ls="--", label="no anomalies")
    a.set_xlabel("iteration t")
    a.set_ylabel("test AUROC %")
    a.set_xticks(iterations)
    a.legend(fontsize=8)
    b.plot(iterations, 100 * np.asarray(hard_share), "o-", color="tab:red")
    b.set_xlabel("iteration t")
    b.set_ylabel("hard share of A_t %")
    b.set_xticks(iterations)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def gains_plot(gains: dict[str, np.ndarray], ylabel: str, title: str) -> bytes:
    """Per method: one dot per task (class) and a bar at their mean."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(gains), 3.6))
    for i, values in enumerate(gains.values()):
        ax.bar(i, np.nanmean(values), color="C0", alpha=0.35)
        ax.scatter(i + np.linspace(-0.25, 0.25, len(values)), values, s=12, color="C0")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(gains)), list(gains), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def tsne_panels(panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str, seed: int = 0) -> bytes:
    """The paper's Fig. 5: per panel, a 2-d t-SNE (scikit-learn) of embeddings with targets 0 = normal,
    1 = anomaly."""
    from sklearn.manifold import TSNE

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (label, (x, targets)) in zip(axes[0], panels.items(), strict=True):
        xy = TSNE(2, init="pca", perplexity=min(30, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
        for t, name, color in ((0, "test normal", "tab:blue"), (1, "test anomaly", "tab:red")):
            ax.scatter(*xy[targets == t].T, s=5, alpha=0.6, color=color, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def training_curves(curves: dict[str, dict[str, list[float]]], title: str) -> bytes:
    """The paper's Fig. 6: per run, the training loss and the validation separation against epochs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    for label, c in curves.items():
        a.plot(range(1, len(c["loss"]) + 1), c["loss"], "o-", ms=3, label=label)
        if c.get("separation"):
            b.plot(range(1, len(c["separation"]) + 1), c["separation"], "o-", ms=3, label=label)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    b.set_xlabel("epoch")
    b.set_ylabel("AUROC, validation normals vs\nunused generated anomalies")
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
