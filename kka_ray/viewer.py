"""A run's viewer: one self-contained `report.html` in the run folder (images inline, no server, no network):
the AUROC and hard-share curves, per iteration the metrics, the DPO round and the grids, and every generated
anomaly with its provenance in a table that filters by text, iteration and verdict."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pyarrow as pa
from PIL import Image

from kka_ray.store import RunStore

VIEWER = "report.html"
METRICS = [("anomalies", "|A_t|", "{:.0f}"), ("new", "new", "{:.0f}"), ("rejected", "rejected lines", "{:.0f}"),
           ("hard", "hard (new)", "{:.0f}"), ("easy", "easy (new)", "{:.0f}"), ("hard_share", "hard share", "{:.3f}"),
           ("auroc", "test AUROC %", "{:.1f}"), ("dpo_loss", "DPO loss", "{:.3f}"),
           ("dpo_reward_margin", "DPO margin", "{:.3f}"), ("dpo_heldout_reward_margin", "held-out margin", "{:.3f}"),
           ("dpo_heldout_reward_accuracy", "held-out accuracy", "{:.2f}"), ("seconds", "seconds", "{:.0f}")]
PROVENANCE = ["iteration", "anomaly_id", "sentence", "representative_text", "adapter", "score", "boundary", "hard",
              "in_set"]

SCRIPT = """
function filterRows() {
  const text = document.getElementById("q").value.toLowerCase();
  const it = document.getElementById("it").value, verdict = document.getElementById("verdict").value;
  let shown = 0;
  for (const row of document.querySelectorAll("#provenance tbody tr")) {
    const ok = row.textContent.toLowerCase().includes(text) && (it === "" || row.dataset.iteration === it) &&
      (verdict === "" || row.dataset.verdict === verdict);
    row.style.display = ok ? "" : "none";
    shown += ok;
  }
  document.getElementById("shown").textContent = shown;
}
for (const id of ["q", "it", "verdict"]) {
  for (const kind of ["input", "change"]) document.getElementById(id).addEventListener(kind, filterRows);
}
filterRows();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; }
table { border-collapse: collapse; font-size: 0.8rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.4rem; text-align: left; vertical-align: top; }
img.thumb { width: 42px; image-rendering: pixelated; }
img.grid { max-width: 48%; margin-right: 1%; }
tr[data-verdict=hard] td:first-child { border-left: 4px solid #d62728; }
tr[data-verdict=easy] td:first-child { border-left: 4px solid #1f77b4; }
"""


def _png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _thumb(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return _png_data(buf.getvalue())


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _metrics_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{label}</th>" for _, label, _ in METRICS)
    body = []
    for r in rows:
        cells = "".join(f"<td>{fmt.format(r[k]) if _finite(r.get(k)) else ''}</td>" for k, _, fmt in METRICS)
        body.append(f"<tr><td>{r['iteration']}</td>{cells}</tr>")
    return f"<table><thead><tr><th>t</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _provenance(tables: list[pa.Table]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ["image", *PROVENANCE])
    body = []
    for table in tables:
        images = table.column("image").combine_chunks().to_numpy_ndarray()
        for row, image in zip(table.select(PROVENANCE).to_pylist(), images, strict=True):
            verdict = "" if row["hard"] is None else ("hard" if row["hard"] else "easy")
            cells = "".join(f"<td>{_cell(row[c])}</td>" for c in PROVENANCE)
            body.append(f'<tr data-iteration="{row["iteration"]}" data-verdict="{verdict}">'
                        f'<td><img class="thumb" src="{_thumb(image)}" alt=""></td>{cells}</tr>')
    return f'<table id="provenance"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def render_viewer(store: RunStore, name: str, rows: list[dict], baseline: dict) -> str:
    """The viewer's HTML for a run folder's finished iterations."""
    iterations = [r["iteration"] for r in rows]
    parts = [f"<h1>KKA run {html.escape(name)}</h1>",
             f"<p>{html.escape(store.location)}: SAD without anomalies {baseline.get('auroc', float('nan')):.1f}; "
             f"iterations {iterations}.</p>"]
    if store.exists("auroc.png"):
        parts.append(f'<img src="{_png_data(store.read_bytes("auroc.png"))}" alt="AUROC and hard share by iteration">')
    parts += ["<h2>Iterations</h2>", _metrics_table(rows)]
    for t in iterations:
        grids = "".join(f'<img class="grid" src="{_png_data(store.read_bytes(f"iter_{t}/{g}"))}" alt="{g}">'
                        for g in ("grid.png", "hard_grid.png") if store.exists(f"iter_{t}/{g}"))
        parts.append(f"<h3>Iteration {t}</h3>{grids}")
    tables = [store.read_table(f"iter_{t}/generated.parquet") for t in iterations]
    options = "".join(f'<option value="{t}">{t}</option>' for t in iterations)
    parts += ["<h2>Every generated anomaly</h2>",
              '<p>filter <input id="q" placeholder="text"> iteration <select id="it"><option value="">all</option>'
              f'{options}</select> verdict <select id="verdict"><option value="">all</option>'
              '<option value="hard">hard</option><option value="easy">easy</option></select> '
              '(<span id="shown"></span> shown)</p>',
              _provenance(tables)]
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>KKA run {html.escape(name)}"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}<script>{SCRIPT}</script></body></html>")


def write_viewer(store: RunStore, name: str, rows: list[dict], baseline: dict) -> str:
    store.write_text(VIEWER, render_viewer(store, name, rows, baseline))
    return store.path(VIEWER)
