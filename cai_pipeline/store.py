"""The run folder: Parquet shards written atomically, rejects beside them, an atomic manifest.

A shard exists only when whole: it is written to a temporary name, fsynced, and renamed into place. The data
part is written last, after the shard's rejects and stats, so its presence is the one mark of a finished
shard; a shard cut short by a crash is simply done again (its rejects and stats are overwritten, never
appended), which keeps every row exactly once. One `cai run` at a time holds the folder (`RunStore.lock`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel

from cai_pipeline.errors import UserError
from cai_pipeline.records import RejectRecord, to_table


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`. A failure leaves the old file (or none).

    A disk that refuses the write (full, read-only, gone) is the machine, not a bug: one line, and the same
    command resumes from the last whole shard once it is fixed."""
    try:
        _write_and_rename(path, write)
    except OSError as e:
        reason = e.strerror or " ".join(str(e).split())[:120]
        raise UserError(f"{path}: cannot write ({reason}); free disk space or fix the folder, then run the same "
                        "command again to resume") from None


def _write_and_rename(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_parquet(path: Path, rows: list[dict], model: type[BaseModel]) -> None:
    table = to_table(rows, model)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"out_dir: cannot write to {self.root} ({e.strerror}); choose a writable folder") from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process: two runs on one folder would redo each other's shards and
        overwrite each other's manifest. The kernel drops a flock when its process dies, so a crashed run
        never leaves the folder held."""
        with open(self.root / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise UserError(f"out_dir: {self.root} is in use by another run ({holder}); wait for it to "
                                "finish, or choose another out_dir") from None
            except OSError as e:  # a filesystem without locks (some network mounts): run, but say so
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise
                print(f"warning: {self.root} cannot be locked ({e.strerror}); run one `cai run` on it at a time",
                      file=sys.stderr)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}\n")
            f.flush()
            yield

    def shard_path(self, stage: str, index: int) -> Path:
        return self.root / stage / f"part-{index:05d}.parquet"

    def stats_path(self, stage: str, index: int) -> Path:
        return self.root / stage / f"part-{index:05d}.stats.json"

    def rejects_path(self, stage: str, index: int) -> Path:
        return self.root / "rejects" / stage / f"part-{index:05d}.parquet"

    def has_shard(self, stage: str, index: int) -> bool:
        return self.shard_path(stage, index).exists()

    def shard_indices(self, stage: str) -> list[int]:
        folder = self.root / stage
        if not folder.is_dir():
            return []
        return sorted(int(p.name[5:10]) for p in folder.glob("part-*.parquet"))

    def write_shard(self, stage: str, index: int, rows: list[dict], model: type[BaseModel],
                    rejects: list[dict], stats: dict[str, Any]) -> None:
        write_parquet(self.rejects_path(stage, index), rejects, RejectRecord)
        atomic_write_text(self.stats_path(stage, index), json.dumps(stats, indent=1, sort_keys=True))
        write_parquet(self.shard_path(stage, index), rows, model)  # last: marks the shard done

    def read_shard(self, stage: str, index: int) -> list[dict]:
        return read_parquet(self.shard_path(stage, index))

    def read_stage(self, stage: str) -> list[dict]:
        return [row for i in self.shard_indices(stage) for row in self.read_shard(stage, i)]

    def shard_stats(self, stage: str) -> list[dict]:
        out = []
        for i in self.shard_indices(stage):
            p = self.stats_path(stage, i)
            out.append(json.loads(p.read_text()) if p.exists() else {})
        return out

    def read_rejects(self, stage: str | None = None) -> list[dict]:
        folder = self.root / "rejects"
        pattern = f"{stage}/part-*.parquet" if stage else "*/part-*.parquet"
        return [row for p in sorted(folder.glob(pattern)) for row in read_parquet(p)]

    def clear(self) -> None:
        """Remove what a run wrote (for --restart); leaves unknown files alone."""
        import shutil

        for name in ("sample", "revise", "pairs", "judge", "rejects", "datasets", "checkpoint", "train"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        (self.root / "manifest.json").unlink(missing_ok=True)

    # -- manifest ---------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{self.manifest_path}: damaged manifest; rerun with --restart to start over") from None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True, default=str))
