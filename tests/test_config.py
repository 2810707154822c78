import json
import subprocess

import pytest
import yaml

from kka_ray.benchmark import BenchmarkConfig
from kka_ray.config import ConfigError, apply_overrides, load_config, save_config
from kka_ray.precision import cpu_capability
from kka_ray.records import git_commit, metric_key, write_record


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndetector:\n  epochs: 5\nclasses: [shirt]\n")
    cfg = load_config(BenchmarkConfig, path, ["detector.lr=1e-3", "seeds=[0, 1]", "dataset.options.protocol=fine"])
    assert (cfg.name, cfg.detector.epochs, cfg.detector.lr, cfg.seeds) == ("x", 5, 1e-3, [0, 1])
    assert cfg.dataset.options == {"protocol": "fine"}
    assert cfg.detector.batch_size == 128  # untouched default


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(BenchmarkConfig, None, ["name=y", "detector.epochs=3"])
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(BenchmarkConfig, saved) == cfg
    assert yaml.safe_load(saved.read_text())["detector"]["lr"] == 1e-4  # defaults written out


@pytest.mark.parametrize("override, field", [
    ("detector.lr=abc", "detector.lr"),
    ("detector.epochs=0", "detector.epochs"),
    ("detector.nope=1", "detector.nope"),
    ("dataset.name=imagenet", "dataset.name"),
])
def test_errors_name_the_field_and_value(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(BenchmarkConfig, None, [override])
    assert field in str(e.value)
    assert override.split("=")[1] in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(BenchmarkConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: the top level must be a mapping"):
        load_config(BenchmarkConfig, bad)
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


@pytest.mark.parametrize("folder, model", [
    ("scaling", "kka_ray.scaling:ScalingConfig"),
    ("knn_combine", "kka_ray.knn_combine:KNNCombineConfig"),
    ("benchmark", "kka_ray.benchmark:BenchmarkConfig"),
    ("table2", "kka_ray.table2:Table2Config"),
    ("kka", "kka_ray.loop:KKAConfig"),
])
def test_every_shipped_config_is_valid(folder, model):
    import importlib
    from pathlib import Path

    module, cls = model.split(":")
    files = sorted(Path(__file__).parents[1].glob(f"configs/{folder}/*.yaml"))
    assert files
    for f in files:
        if folder == "kka" and f.name.startswith("bench_"):  # a loop benchmark: it and the runs it makes
            from kka_ray.loop_bench import LoopBenchConfig, base_loop

            base_loop(load_config(LoopBenchConfig, f))
        elif folder == "kka" and f.name.startswith("fig4_"):
            from kka_ray.fig4 import Fig4Config

            load_config(Fig4Config, f)
        else:
            load_config(getattr(importlib.import_module(module), cls), f)


def test_a_job_writing_records_and_archives_does_not_mark_its_own_code_modified(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, cwd=tmp_path,
                       capture_output=True)

    for f in ("kka_ray/x.py", "docs/results/r.json", "archive/rows/results.parquet"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("0")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    monkeypatch.chdir(tmp_path)
    for f in ("docs/results/r.json", "archive/rows/results.parquet"):
        (tmp_path / f).write_text("1")
    assert not git_commit().endswith("+modified")
    (tmp_path / "kka_ray/x.py").write_text("1")
    assert git_commit().endswith("+modified")


def test_record_fields_and_validation(tmp_path):
    path = write_record("r", {"a": 1.5, "n": 3}, "# r\n", tmp_path, command="python jobs/x.py")
    rec = json.loads(path.read_text())
    assert {"name", "command", "date", "machine", "commit", "metrics"} <= rec.keys()
    assert rec["metrics"] == {"a": 1.5, "n": 3} and rec["command"] == "python jobs/x.py"
    assert f", {cpu_capability()})" in rec["machine"]  # the CPU's kind: AVX2 and AVX512_BF16 VMs share a name
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["commit"].removesuffix("+modified") == head  # the code the numbers came from
    assert (tmp_path / "r.md").read_text() == "# r\n"
    with pytest.raises(ValueError, match="finite numbers"):
        write_record("r", {"a": float("nan")}, "", tmp_path)
    with pytest.raises(ValueError, match="record r: .*use None"):  # NaN is not JSON anywhere in a record
        write_record("r", {"a": 1.0}, "", tmp_path, extra={"runs": [{"x": float("nan")}]})
    assert metric_key("ankle boot") == "ankle_boot" and metric_key("T-shirt") == "t_shirt"


@pytest.mark.parametrize("model, field, value", [
    ("kka_ray.llm:LMConfig", "backend", "openai"),
    ("kka_ray.render:RenderConfig", "backend", "dalle"),
    ("kka_ray.features:FeatureConfig", "name", "resnet"),
])
def test_backend_names_are_checked_against_their_registry(model, field, value):
    import importlib

    module, cls = model.split(":")
    with pytest.raises(ConfigError, match=rf"{field}.*unknown .* '{value}'; registered"):
        load_config(getattr(importlib.import_module(module), cls), None, [f"{field}={value}"])


def test_scaling_needs_a_trainable_detector():
    from kka_ray.detectors.knn import KNNConfig
    from kka_ray.scaling import with_workers

    with pytest.raises(ValueError, match="'knn' has no `train`"):
        with_workers(KNNConfig(), 2)
