"""Run folders lose nothing: writes by temporary name and move, the state file's previous copy, the driver's lock,
and `--continue` (make demo) never deleting a run."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest
import yaml

from kka_ray.config import ConfigError
from kka_ray.loop import STATE, KKAConfig, continue_or_next, open_run
from kka_ray.store import LOCK, RunLocked, RunStore


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_table("a.parquet", pa.table({"x": [1, 2]}))

    class Boom(Exception):
        pass

    def write(_tmp):
        raise Boom

    with pytest.raises(Boom):
        store._move_into_place("a.parquet", write)
    assert store.read_table("a.parquet").column("x").to_pylist() == [1, 2]
    store.write_bytes("b/c.txt", b"hello")
    assert store.read_text("b/c.txt") == "hello"
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "w.bin").write_bytes(b"1")
    store.put_dir(tmp_path / "src", "d")
    (tmp_path / "src" / "sub" / "w.bin").write_bytes(b"2")
    store.put_dir(tmp_path / "src", "d")  # replaced whole
    assert (tmp_path / "run" / "d" / "sub" / "w.bin").read_bytes() == b"2"
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["a.parquet", "b", "c.txt", "d", "sub", "w.bin"]


def test_state_keeps_its_previous_copy_and_falls_back_to_it(tmp_path, capsys):
    store = RunStore(tmp_path)
    store.write_state(STATE, {"completed": 0})
    store.write_state(STATE, {"completed": 1})
    assert store.read_state(STATE) == {"completed": 1} and store.read_json(f"{STATE}.prev") == {"completed": 0}
    (tmp_path / STATE).write_text('{"completed": 2, "ro')  # cut short
    assert store.read_state(STATE) == {"completed": 0}
    assert "unreadable" in capsys.readouterr().out
    (tmp_path / f"{STATE}.prev").unlink()
    with pytest.raises(ValueError, match="unreadable .* no previous copy"):
        store.read_state(STATE)


def test_lock_refuses_a_live_driver_and_a_gone_one_without_take_over(tmp_path):
    store = RunStore(tmp_path)
    store.lock()
    store.lock()  # the same process again
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = {"host": json.loads((tmp_path / LOCK).read_text())["host"], "pid": live.pid, "since": 0}
        (tmp_path / LOCK).write_text(json.dumps(owner))
        with pytest.raises(RunLocked, match=f"pid {live.pid} .*still running"):
            store.lock(take_over=True)  # never from a live driver
    finally:
        live.kill()
        live.wait()
    with pytest.raises(RunLocked, match="not running on this host.*--take-over"):
        store.lock()
    store.lock(take_over=True)
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunLocked, match="another host's"):
        store.lock()
    store.lock(take_over=True)
    store.unlock()
    assert not (tmp_path / LOCK).exists()


def test_open_run_takes_the_lock_and_gives_it_back_on_error(tmp_path):
    cfg = KKAConfig(run_dir=str(tmp_path), name="r")
    open_run(cfg, resume=False)
    assert (tmp_path / "r" / LOCK).exists()
    (tmp_path / "r" / LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(ConfigError, match="locked by pid 1 on elsewhere"):
        open_run(cfg, resume=True)
    store = RunStore(tmp_path / "r")
    store.unlock()
    (tmp_path / "r" / LOCK).unlink()
    store.write_state(STATE, {"completed": 0, "rows": [{"iteration": 0}], "baseline": {}})
    with pytest.raises(ConfigError, match="cannot go further"):
        open_run(cfg, resume=True)
    assert not (tmp_path / "r" / LOCK).exists()  # the refusal left no lock behind


def _saved(tmp_path, name: str, cfg: KKAConfig, completed: int) -> None:
    store = RunStore(tmp_path / name)
    store.write_text("config.yaml", yaml.safe_dump(cfg.model_copy(update={"name": name}).model_dump(mode="json")))
    store.write_state(STATE, {"completed": completed, "rows": [], "baseline": {}})


def test_continue_resumes_an_unfinished_run_and_never_reuses_a_finished_one(tmp_path):
    cfg = KKAConfig(run_dir=str(tmp_path), name="kka-demo")
    assert continue_or_next(cfg) == (cfg, False)  # nothing there: a new run
    _saved(tmp_path, "kka-demo", cfg, completed=0)
    named, resume = continue_or_next(cfg)
    assert (named.name, resume) == ("kka-demo", True)  # unfinished, same config: resumed
    _saved(tmp_path, "kka-demo", cfg, completed=cfg.update.iterations)
    named, resume = continue_or_next(cfg)
    assert (named.name, resume) == ("kka-demo-2", False)  # finished: kept, and a new folder
    other = cfg.model_copy(update={"seed": 5})
    _saved(tmp_path, "kka-demo-2", cfg, completed=0)
    assert continue_or_next(other)[0].name == "kka-demo-3"  # an unfinished run of another config is left alone
    # a folder saved by a version with other options (unknown keys) is another run, finished or not
    store = RunStore(tmp_path / "kka-demo-3")
    store.write_text("config.yaml", yaml.safe_dump({**cfg.model_dump(mode="json"), "prefer": {"pairs_per_hard": 4}}))
    store.write_state(STATE, {"completed": 0, "rows": [], "baseline": {}})
    assert continue_or_next(other) == (other.model_copy(update={"name": "kka-demo-4"}), False)
