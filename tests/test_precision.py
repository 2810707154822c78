"""`bf16: auto` per component and device, with the CPU's capability faked both ways."""

import pytest

from kka_ray import precision
from kka_ray.config import DeepSADConfig
from kka_ray.precision import BF16_FASTER_ON_CPU, COMPONENTS, cpu_native_bf16, resolve_bf16


@pytest.mark.parametrize("component", COMPONENTS)
def test_auto_never_picks_bf16_on_a_cpu_without_native_bf16(component):
    assert resolve_bf16(component, "auto", "cpu", native_cpu_bf16=False) is False


@pytest.mark.parametrize("component", COMPONENTS)
def test_auto_on_a_native_bf16_cpu_follows_the_measurements(component):
    assert resolve_bf16(component, "auto", "cpu", native_cpu_bf16=True) is BF16_FASTER_ON_CPU[component]


def test_measured_table_as_recorded():
    # docs/results/perf-cpu.json: Deep SAD, the LM and DPO ran faster in bf16 on AVX512_BF16; the prior did not.
    assert BF16_FASTER_ON_CPU == {"deepsad": True, "lm": True, "dpo": True, "prior": False}


@pytest.mark.parametrize("setting", [True, False])
@pytest.mark.parametrize("native", [True, False])
def test_explicit_setting_wins(setting, native):
    for component in COMPONENTS:
        assert resolve_bf16(component, setting, "cpu", native_cpu_bf16=native) is setting


@pytest.mark.parametrize("supported", [True, False])
def test_cuda_follows_the_gpu(monkeypatch, supported):
    monkeypatch.setattr(precision, "cuda_bf16", lambda: supported)
    assert all(resolve_bf16(c, "auto", "cuda", native_cpu_bf16=False) is supported for c in COMPONENTS)


def test_cpu_flags_decide_native_bf16():
    assert cpu_native_bf16(frozenset({"avx2", "fma"})) is False
    assert cpu_native_bf16(frozenset({"avx512f", "avx512_bf16"})) is True
    assert cpu_native_bf16(frozenset({"amx_tile", "amx_bf16"})) is True


def test_unknown_component_and_bad_setting_are_errors():
    with pytest.raises(ValueError, match="unknown component 'vae'"):
        resolve_bf16("vae", "auto", "cpu")
    with pytest.raises(ValueError, match="bf16"):
        DeepSADConfig(bf16="fast")


def test_configs_default_to_auto():
    from kka_ray.prior.model import PriorConfig
    from kka_ray.stages.prefer import PreferConfig

    assert DeepSADConfig().bf16 == PriorConfig().bf16 == PreferConfig().bf16 == "auto"
