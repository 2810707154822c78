"""A run directory on any pyarrow filesystem: a local path, or a URI such as s3://bucket/runs/x.

The loop writes each completed iteration here, so a cluster job can checkpoint to shared storage and a
`--resume` can continue from it on another machine. Every file is written under a temporary name and moved into
place, so a kill or a full disk mid-write leaves the previous file whole: on a local disk the move is a rename
(atomic); on object stores a file is one PUT, and the move a copy then delete. Folders (`put_dir`) are copied
to a temporary folder and renamed locally; on object stores they are copied in place (no folder rename there),
so the loop writes its state file, which names what is complete, only after them. A run folder also holds a
lock naming its driver (host, pid), so two drivers never interleave their files.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(location: str) -> bool:
    return "://" in location


class RunStore:
    def __init__(self, location: str | Path):
        location = str(location)
        if is_uri(location):
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).resolve())
        self.location = location
        self.fs.create_dir(self.root, recursive=True)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def _parent(self, rel: str) -> None:
        self.fs.create_dir(self.path(rel).rsplit("/", 1)[0], recursive=True)

    def _move_into_place(self, rel: str, write) -> None:
        """`write(tmp_path)`, then move the temporary file onto `rel`; a failed write leaves `rel` as it was."""
        self._parent(rel)
        tmp = f"{self.path(rel)}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            write(tmp)
            self.fs.move(tmp, self.path(rel))
        finally:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)

    def write_table(self, rel: str, table: pa.Table) -> None:
        self._move_into_place(rel, lambda tmp: pq.write_table(table, tmp, filesystem=self.fs))

    def read_table(self, rel: str) -> pa.Table:
        try:
            return pq.read_table(self.path(rel), filesystem=self.fs)
        except (pa.ArrowInvalid, OSError) as e:  # truncated, not Parquet, or absent
            raise ValueError(f"{self.path(rel)}: not a readable Parquet table ({e})") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        def write(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)

        self._move_into_place(rel, write)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2) + "\n")

    def read_json(self, rel: str):
        return json.loads(self.read_text(rel))

    def put_dir(self, local: str | Path, rel: str) -> None:
        local = str(Path(local).resolve())
        if not isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(self.path(rel), recursive=True)
            pafs.copy_files(local, self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
            return
        tmp = f"{self.path(rel)}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(tmp, recursive=True)
        pafs.copy_files(local, tmp, source_filesystem=self.fs, destination_filesystem=self.fs)
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))
        self.fs.move(tmp, self.path(rel))

    def copy_into(self, other: RunStore, rels) -> None:
        """Copy the files `rels` that exist here to the same names in `other` (each moved into place there)."""
        for rel in (r for r in rels if self.exists(r)):
            other.write_bytes(rel, self.read_bytes(rel))

    def uri(self, rel: str) -> str:
        """Where others (actors, a later run) find `rel`: an absolute local path, or a URI."""
        return f"{self.location.rstrip('/')}/{rel}" if is_uri(self.location) else self.path(rel)

    def write_state(self, rel: str, obj) -> None:
        """A state file whose previous good copy stays beside it (`<rel>.prev`) until the new one is in place."""
        if self.exists(rel):
            self.fs.copy_file(self.path(rel), self.path(f"{rel}.prev"))
        self.write_json(rel, obj)

    def read_state(self, rel: str):
        """The state file, or its previous good copy when the file is unreadable (a write cut short by a kill
        outside this store, or a disk error); an error names both when neither reads."""
        try:
            return self.read_json(rel)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            if not self.exists(f"{rel}.prev"):
                raise ValueError(f"{self.path(rel)} is unreadable ({e}) and has no previous copy") from None
            print(f"[store] {self.path(rel)} is unreadable ({e}); using {rel}.prev", flush=True)
            return self.read_json(f"{rel}.prev")

    def lock(self, take_over: bool = False) -> None:
        """Mark the folder as this process's. Another owner is refused: one still running on this host always;
        one that is gone, or on another host (which cannot be checked), unless `take_over`."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        if self.exists(LOCK):
            owner = self.read_json(LOCK)
            if (owner.get("host"), owner.get("pid")) == (me["host"], me["pid"]):
                return
            running = owner.get("host") == me["host"] and _running(owner.get("pid"))
            if running or not take_over:
                where = ("still running" if running else "not running on this host"
                         if owner.get("host") == me["host"] else "another host's: it cannot be checked from here")
                raise RunLocked(f"{self.location} is locked by pid {owner.get('pid')} on {owner.get('host')} "
                                f"({where})" + ("" if running else "; if that driver is gone, take the folder "
                                                "over with --take-over"))
        self.write_json(LOCK, me)

    def unlock(self) -> None:
        if self.exists(LOCK) and self.read_json(LOCK).get("pid") == os.getpid():
            self.fs.delete_file(self.path(LOCK))


LOCK = "run.lock"


class RunLocked(RuntimeError):
    """Another driver holds the run folder."""


def _running(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True
