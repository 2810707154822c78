"""`bf16: auto` per component and device, with the CPU's flags faked: AVX2 only, AVX512_BF16 without AMX, AMX."""

import pytest

from kka_ray import precision
from kka_ray.config import DeepSADConfig
from kka_ray.precision import BF16_FASTER_ON_CPU, COMPONENTS, cpu_bf16_kind, cpu_native_bf16, resolve_bf16

AVX2 = frozenset({"avx2", "fma"})
ZEN5 = frozenset({"avx2", "avx512f", "avx512_bf16"})
XEON = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})


@pytest.mark.parametrize("component", COMPONENTS)
def test_auto_never_picks_bf16_on_a_cpu_without_native_bf16(component):
    assert resolve_bf16(component, "auto", "cpu", flags=AVX2) is False


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize(("flags", "kind"), [(ZEN5, "avx512_bf16"), (XEON, "amx")])
def test_auto_on_a_native_bf16_cpu_follows_the_measurements_of_its_kind(component, flags, kind):
    assert resolve_bf16(component, "auto", "cpu", flags=flags) is BF16_FASTER_ON_CPU[kind][component]


def test_measured_table_as_recorded():
    # perf-cpu (Zen 5, AVX512_BF16): Deep SAD, the LM and DPO ran faster in bf16, the prior did not;
    # perf-cpu-amx / perf-cpu-amx-dpo (AMX Xeon): the same but DPO, as fast in fp32 and lighter.
    assert BF16_FASTER_ON_CPU == {"avx512_bf16": {"deepsad": True, "lm": True, "dpo": True, "prior": False},
                                  "amx": {"deepsad": True, "lm": True, "dpo": False, "prior": False}}


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize("flags", [AVX2, ZEN5, XEON])
def test_explicit_setting_wins(setting, flags):
    for component in COMPONENTS:
        assert resolve_bf16(component, setting, "cpu", flags=flags) is setting


@pytest.mark.parametrize("supported", [True, False])
def test_cuda_follows_the_gpu(monkeypatch, supported):
    monkeypatch.setattr(precision, "cuda_bf16", lambda: supported)
    assert all(resolve_bf16(c, "auto", "cuda", flags=AVX2) is supported for c in COMPONENTS)


def test_cpu_flags_decide_the_kind():
    assert cpu_bf16_kind(AVX2) is None and cpu_native_bf16(AVX2) is False
    assert cpu_bf16_kind(ZEN5) == "avx512_bf16" and cpu_native_bf16(ZEN5) is True
    assert cpu_bf16_kind(XEON) == "amx" and cpu_native_bf16(XEON) is True


def test_unknown_component_and_bad_setting_are_errors():
    with pytest.raises(ValueError, match="unknown component 'vae'"):
        resolve_bf16("vae", "auto", "cpu")
    with pytest.raises(ValueError, match="bf16"):
        DeepSADConfig(bf16="fast")


def test_configs_default_to_auto():
    from kka_ray.prior.model import PriorConfig
    from kka_ray.stages.prefer import PreferConfig

    assert DeepSADConfig().bf16 == PriorConfig().bf16 == PreferConfig().bf16 == "auto"
