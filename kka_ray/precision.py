"""bf16 or fp32, per component and device, from what was measured.

bf16 autocast is a large win on CPUs with native bf16 arithmetic (AVX512_BF16 or AMX) for some of the
project's networks and a 6-9x loss on CPUs without it (AVX2: oneDNN emulates bf16). So `bf16: auto`, the
default of every component, resolves at run time on the device that does the work:

- CUDA: bf16 where the GPU supports it (Ampere and newer), the usual rule.
- CPU without native bf16: never.
- CPU with native bf16: only for the components measured faster in bf16 on that kind of CPU
  (`BF16_FASTER_ON_CPU`, from `jobs/bench_perf.py`, records `docs/results/perf-cpu*.json`): AMX (Intel Xeon,
  bf16 matrix tiles) and AVX512_BF16 without AMX (AMD Zen 4/5; measured on a Zen 5) do not rank the components
  alike.

An explicit true / false in a config always wins.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

Bf16 = bool | Literal["auto"]
COMPONENTS = ("deepsad", "prior", "dpo", "lm")

# Measured per kind of native-bf16 CPU (jobs/bench_perf.py; seconds are the records' own):
# - deepsad: faster in bf16 on both: the LeNet autoencoder epoch 1.6x (perf-cpu: Zen 5) and 2.3x (perf-cpu-amx),
#   the Deep SAD epoch 1.2-1.3x.
# - lm: SmolLM2 sampling 1.6-1.9x faster in bf16 on both (shared prefix: 94.8 -> 179 tokens/s on the Zen 5,
#   94.5 -> 152 on the AMX Xeon).
# - dpo: a step 1.5x faster in bf16 on the Zen 5 (3.34 -> 2.18 s). On the AMX Xeon a wash (fp32 / bf16 s per
#   step: 4.19 / 4.56 in perf-cpu-amx's 8-step rounds, 2.68 / 2.61 in perf-cpu-amx-dpo's 16-step ones) with
#   fp32 0.4-0.75 GB lighter and exact, so fp32 there.
# - prior: fp32 is faster for its GroupNorm-heavy nets (kka_ray/prior/model.py).
BF16_FASTER_ON_CPU = {
    "amx": {"deepsad": True, "lm": True, "prior": False, "dpo": False},
    "avx512_bf16": {"deepsad": True, "lm": True, "prior": False, "dpo": True},
}

BF16_DESCRIPTION = ("bf16 (autocast / weights): auto = by device and measurement (kka_ray/precision.py), "
                    "true / false forces it")


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_kind(flags: frozenset[str] | None = None) -> str | None:
    """'amx' (bf16 matrix tiles), 'avx512_bf16' (bf16 dot products in the vector units only), or None: bf16
    emulated (AVX2 and older)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else None


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX512_BF16 or AMX-BF16: bf16 arithmetic in hardware, not emulated."""
    return cpu_bf16_kind(flags) is not None


def cpu_capability() -> str:
    """One short name for records: torch's vector ISA, plus the native bf16 extensions."""
    import torch

    extras = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extras])


def cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_bf16(component: str, setting: Bf16, device: str, *, flags: frozenset[str] | None = None) -> bool:
    """The precision a component runs at on `device` ('cpu' or 'cuda'); see the module docstring. `flags`:
    the CPU's /proc/cpuinfo flags (this machine's by default)."""
    if component not in COMPONENTS:
        raise ValueError(f"precision: unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    if setting != "auto":
        return bool(setting)
    if device.startswith("cuda"):
        return cuda_bf16()
    kind = cpu_bf16_kind(flags)
    return kind is not None and BF16_FASTER_ON_CPU[kind][component]


def describe(device: str = "cpu") -> dict[str, object]:
    """The choices `auto` makes on this machine, for reports and records."""
    return {"cpu_capability": cpu_capability(), "native_bf16": cpu_native_bf16(),
            **{f"bf16_{c}": resolve_bf16(c, "auto", device) for c in COMPONENTS}}
