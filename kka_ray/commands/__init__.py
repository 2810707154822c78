"""The `kka` command: one subcommand per job (`kka --help` lists them; `kka <command> --help` lists a job's
options and every field of its config). The same code runs as `python jobs/<job>.py` for `ray job submit`."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

# command words -> (module in kka_ray.commands, argv prefix)
COMMANDS: dict[tuple[str, ...], tuple[str, list[str]]] = {
    ("loop",): ("kka_loop", []),
    ("resume",): ("kka_loop", ["--resume"]),
    ("serve",): ("serve", []),
    ("export",): ("export", []),
    ("report",): ("report", []),
    ("generate",): ("generate_descriptions", []),
    ("prior", "train"): ("train_prior", []),
    ("prior", "bench"): ("bench_prior", []),
    ("bench", "detector"): ("benchmark", []),
    ("bench", "table2"): ("table2", []),
    ("bench", "loop"): ("bench_kka", []),
    ("bench", "controls"): ("bench_controls", []),
    ("bench", "fig4"): ("bench_fig4", []),
    ("bench", "boundary"): ("bench_boundary", []),
    ("bench", "dpo-sizing"): ("bench_dpo_sizing", []),
    ("bench", "knowledge"): ("bench_knowledge", []),
    ("bench", "scaling"): ("bench_scaling", []),
    ("bench", "knn-combine"): ("knn_combine", []),
    ("bench", "perf"): ("bench_perf", []),
    ("bench", "faults"): ("bench_faults", []),
    ("bench", "serve-load"): ("serve_load", []),
    ("bench", "gpu-sizing"): ("gpu_sizing", []),
    ("bench", "vllm"): ("bench_vllm", []),
    ("convert-checkpoints",): ("convert_checkpoints", []),
}


def summary(module: str) -> str:
    """The first sentence of a command's docstring, read from its source: importing every command to list
    them cost seconds (torch, Ray, diffusers)."""
    source = Path(__file__).with_name(f"{module}.py").read_text()
    doc = " ".join((ast.get_docstring(ast.parse(source)) or "").split())
    first = doc.split(": ")[0].split(". ")[0].rstrip(".")
    return first if len(first) <= 90 else first[:87] + "..."


def usage() -> str:
    lines = ["usage: kka <command> [options]   (kka <command> --help for its options and config fields)", "",
             "commands:"]
    for words, (module, prefix) in COMMANDS.items():
        name = " ".join(words) + (" RUN" if prefix == ["--resume"] else "")
        lines.append(f"  {name:<22} {summary(module) if not prefix else 'continue a KKA run folder'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for words, (module, prefix) in COMMANDS.items():
        if tuple(argv[:len(words)]) == words:
            sys.argv[0] = "kka " + " ".join(words)  # argparse's prog in usage lines
            rest = argv[len(words):]
            asks_help = any(a in ("-h", "--help") for a in rest)
            importlib.import_module(f"kka_ray.commands.{module}").main(rest if asks_help else prefix + rest)
            return
    if argv and argv[0] not in ("-h", "--help"):
        sys.exit(f"kka: unknown command {' '.join(argv[:2])!r}\n\n{usage()}")
    print(usage())
