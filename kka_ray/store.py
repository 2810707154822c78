"""A run directory on any pyarrow filesystem: a local path, or a URI such as s3://bucket/runs/x.

The loop writes each completed iteration here, so a cluster job can checkpoint to shared storage and a
`--resume` can continue from it on another machine.
"""

from __future__ import annotations

import json
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

    def write_table(self, rel: str, table: pa.Table) -> None:
        self._parent(rel)
        pq.write_table(table, self.path(rel), filesystem=self.fs)

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._parent(rel)
        with self.fs.open_output_stream(self.path(rel)) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read().decode()

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2) + "\n")

    def read_json(self, rel: str):
        return json.loads(self.read_text(rel))

    def put_dir(self, local: str | Path, rel: str) -> None:
        self.fs.create_dir(self.path(rel), recursive=True)
        pafs.copy_files(str(Path(local).resolve()), self.path(rel), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def uri(self, rel: str) -> str:
        """Where others (actors, a later run) find `rel`: an absolute local path, or a URI."""
        return f"{self.location.rstrip('/')}/{rel}" if is_uri(self.location) else self.path(rel)
