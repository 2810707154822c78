"""bf16 or fp32, per component and device, from what was measured.

bf16 autocast is a large win on CPUs with native bf16 arithmetic (AVX512_BF16 or AMX) for some of the
project's networks and a 6-9x loss on CPUs without it (AVX2: oneDNN emulates bf16). So `bf16: auto`, the
default of every component, resolves at run time on the device that does the work:

- CUDA: bf16 where the GPU supports it (Ampere and newer), the usual rule.
- CPU without native bf16: never.
- CPU with native bf16: only for the components measured faster in bf16 there (`BF16_FASTER_ON_CPU`, from
  `jobs/bench_perf.py`, record `docs/results/perf-cpu*.json`).

An explicit true / false in a config always wins.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

Bf16 = bool | Literal["auto"]
COMPONENTS = ("deepsad", "prior", "dpo", "lm")

# Measured on CPUs with AVX512_BF16 (jobs/bench_perf.py -> docs/results/perf-cpu*.json; STACK.md):
# - deepsad: the LeNet autoencoder epoch is 2.3-2.8x faster in bf16.
# - lm: SmolLM2 sampling is about 2x faster in bf16.
# - dpo: a step is about 1.7x faster in bf16 and the loss falls as fast per step (the record compares both).
# - prior: fp32 is faster for its GroupNorm-heavy nets (kka_ray/prior/model.py).
BF16_FASTER_ON_CPU = {"deepsad": True, "lm": True, "prior": False, "dpo": True}

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


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX512_BF16 or AMX-BF16: bf16 dot products in hardware, not emulated."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_capability() -> str:
    """One short name for records: torch's vector ISA, plus the native bf16 extensions."""
    import torch

    extras = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extras])


def cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_bf16(component: str, setting: Bf16, device: str, *, native_cpu_bf16: bool | None = None) -> bool:
    """The precision a component runs at on `device` ('cpu' or 'cuda'); see the module docstring."""
    if component not in COMPONENTS:
        raise ValueError(f"precision: unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    if setting != "auto":
        return bool(setting)
    if device.startswith("cuda"):
        return cuda_bf16()
    native = cpu_native_bf16() if native_cpu_bf16 is None else native_cpu_bf16
    return native and BF16_FASTER_ON_CPU[component]


def describe(device: str = "cpu") -> dict[str, object]:
    """The choices `auto` makes on this machine, for reports and records."""
    return {"cpu_capability": cpu_capability(), "native_bf16": cpu_native_bf16(),
            **{f"bf16_{c}": resolve_bf16(c, "auto", device) for c in COMPONENTS}}
