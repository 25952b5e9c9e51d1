"""The run folder: its layout (every path, in one place), atomic writes, Parquet shards, the manifest.

A shard exists only when whole: it is written to a temporary name, fsynced, and renamed into place. The data
part is written last, after the shard's rejects and stats, so its presence is the one mark of a finished
shard; a shard cut short by a crash is simply done again (its rejects and stats are overwritten, never
appended), which keeps every row exactly once. One `cai run` at a time holds the folder (`RunStore.lock`).

A folder that holds Parquet holds only Parquet, so `pandas.read_parquet`, `pyarrow.dataset.dataset` and
`datasets.load_dataset("parquet", data_dir=...)` read any of them directly: shard stats live under stats/,
rejects under rejects/, plots under train/plots/. The one exception is audit/: its two tables are different
records, so each is a single file opened by its own name (`pandas.read_parquet("audit/verdicts.parquet")`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel

from cai_pipeline.errors import UserError
from cai_pipeline.records import RejectRecord, to_table

PACKAGE = "cai-pipeline"  # the manifest's "package": what marks a folder as one of our runs


class RunLayout:
    """Every path of a run folder. No other module builds one, so a path changes in one place.

    ```
    manifest.json  constitution.yaml  .lock  .workers-probe  report.html
    <stage>/part-00000.parquet        sample, revise, pairs, judge: rows only
    stats/<stage>/part-00000.json     per-shard counts and timings
    rejects/<stage>/part-00000.parquet
    datasets/sft/  datasets/preferences/  datasets/README.md
    checkpoint/                       the trained model (a plain Hugging Face folder)
    train/  metrics.jsonl  summary.json  plots/*.png  state/
    audit/  responses.parquet  verdicts.parquet  summary.json  README.md  plots/*.png
    judge-check/  summary.json  README.md  shifts.png       `cai judge-check CONFIG`: the judge's bias profile
    rounds/NN-kind/                   (each round a run folder of its own)
    iterate.json                      `cai iterate`: the rounds, their models, audits and gate decisions
    vs-base/NN-kind/                  `cai iterate`: a round's model audited against the base (a run folder)
    ```
    """

    # Entries that belong to no stage (the stages' own come from the stage list: stages.owned_entries()).
    FIXED = ("stats", "rejects", "rounds", "report.html", "iterate.json", "vs-base", "constitution.yaml",
             "manifest.json", ".workers-probe", "judge-check")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- top level
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def constitution(self) -> Path:
        return self.root / "constitution.yaml"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def workers_probe(self) -> Path:
        """Written by a Ray driver, read by its workers: proof that they see this very folder."""
        return self.root / ".workers-probe"

    # -- sharded stages
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def shard(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / f"part-{index:05d}.parquet"

    def stats_dir(self, stage: str) -> Path:
        return self.root / "stats" / stage

    def stats(self, stage: str, index: int) -> Path:
        return self.stats_dir(stage) / f"part-{index:05d}.json"

    def rejects_dir(self, stage: str | None = None) -> Path:
        return self.root / "rejects" / stage if stage else self.root / "rejects"

    def rejects(self, stage: str, index: int) -> Path:
        return self.rejects_dir(stage) / f"part-{index:05d}.parquet"

    # -- datasets and training
    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, name: str) -> Path:
        """datasets/sft or datasets/preferences: train-*.parquet and test-*.parquet."""
        return self.datasets / name

    def split_file(self, name: str, split: str) -> Path:
        return self.dataset(name) / f"{split}-00000-of-00001.parquet"

    def split_files(self, name: str, split: str) -> list[Path]:
        """Every Parquet file of one split (readers accept `train-*.parquet`, however many there are)."""
        return sorted(self.dataset(name).glob(f"{split}-*.parquet"))

    @property
    def card(self) -> Path:
        return self.datasets / "README.md"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    # -- the audit: two tables, each one Parquet file opened by its name, beside the summary and plots
    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def audit_responses(self) -> Path:
        return self.audit_dir / "responses.parquet"

    @property
    def audit_verdicts(self) -> Path:
        return self.audit_dir / "verdicts.parquet"

    @property
    def audit_summary(self) -> Path:
        """The audit's numbers (**contract**: its model is audit/summary.py AuditSummary; docs/audit.md)."""
        return self.audit_dir / "summary.json"

    @property
    def audit_readme(self) -> Path:
        return self.audit_dir / "README.md"

    @property
    def audit_plots(self) -> Path:
        return self.audit_dir / "plots"

    # -- `cai judge-check CONFIG`: the run's judge probed on the run's pairs
    @property
    def judge_check(self) -> JudgeCheckLayout:
        return JudgeCheckLayout(self.root / "judge-check")

    # -- later stages

    @property
    def rounds_dir(self) -> Path:
        return self.root / "rounds"

    def round(self, index: int, kind: str) -> Path:
        return self.rounds_dir / f"{index:02d}-{kind}"

    @property
    def iterate_manifest(self) -> Path:
        """`cai iterate`'s record of its rounds (see cai_pipeline/iterate.py)."""
        return self.root / "iterate.json"

    def base_audit(self, round_name: str) -> Path:
        """A run folder holding only the audit of round `round_name`'s model against the base model."""
        return self.root / "vs-base" / round_name

    def round_dirs(self) -> list[Path]:
        """The rounds that exist (rounds/NN-kind/, each a run folder of its own), in round order."""
        if not self.rounds_dir.is_dir():
            return []
        return sorted(p for p in self.rounds_dir.iterdir() if p.is_dir() and p.name[:2].isdigit())

    def owned(self, stage_entries: Iterable[str]) -> list[Path]:
        """The entries this project writes, given the stages' own (stages.owned_entries()): all `--restart` may
        remove."""
        return [self.root / name for name in (*stage_entries, *self.FIXED)]

    def deliverables(self) -> list[Path]:
        """What a user opens after a run, where it exists (the manifest lists them; so does the summary)."""
        wanted = [self.dataset("sft"), self.dataset("preferences"), self.card, self.checkpoint, self.audit_dir,
                  self.report, self.rejects_dir(), self.manifest]
        return [p for p in wanted if p.exists()]


class JudgeCheckLayout:
    """`cai judge-check`'s files: a run's judge-check/, or the --out folder of `cai judge-check --data`.

    ```
    summary.json   the bias profile (**contract**: judge_check/summary.py JudgeCheckSummary)
    README.md      the table and what it means        shifts.png   each probe's shift with its interval
    ```
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def readme(self) -> Path:
        return self.root / "README.md"

    @property
    def plot(self) -> Path:
        return self.root / "shifts.png"


class TrainLayout:
    """The trainer's files: under the run's train/ and checkpoint/ unless train.log_dir / train.out_dir say;
    its rejects (rows of train.data it cannot use) in the run's rejects/train/, like every stage's.

    ```
    train/metrics.jsonl  train/summary.json  train/plots/*.png
    train/state/step-00000050/           a resumable state (trainer state: weights, optimizer, RNG, ...)
    rejects/train/part-00000.parquet     both splits' rejected rows, with their reasons
    ```
    """

    def __init__(self, log_dir: str | Path, checkpoint: str | Path, rejects: str | Path):
        self.log_dir, self.checkpoint, self.rejects = Path(log_dir), Path(checkpoint), Path(rejects)

    @property
    def metrics(self) -> Path:
        return self.log_dir / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.log_dir / "summary.json"

    @property
    def plots(self) -> Path:
        return self.log_dir / "plots"

    @property
    def states(self) -> Path:
        return self.log_dir / "state"

    def state(self, step: int) -> Path:
        return self.states / f"step-{step:08d}"


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_error(path: Path, e: OSError) -> UserError:
    """A disk that refuses the write (full, read-only, gone) is the machine, not a bug: one line, and the same
    command resumes from the last whole shard once it is fixed."""
    reason = e.strerror or " ".join(str(e).split())[:120]
    return UserError(f"{path}: cannot write ({reason}); free disk space or fix the folder, then run the same "
                     "command again to resume")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp_path)`, fsync, then rename over `path`. A failure leaves the old file (or none)."""
    try:
        _write_and_rename(path, write)
    except OSError as e:
        raise _disk_error(path, e) from None


def _write_and_rename(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files are as readable as any other
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_folder(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_folder)`, then swap it in for `path`: a crash never leaves half a folder where a reader
    (an engine loading a checkpoint) would find it. The old folder is removed only once the new one is whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise _disk_error(path, e) from None
    return path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _write_table(table, path: Path) -> None:
    if table.num_rows:
        pq.write_table(table, path)
    else:  # no row group at all: `datasets` reads a row group of 0 rows as "batch size 0" and fails
        pq.ParquetWriter(path, table.schema).close()


def write_parquet(path: Path, rows: list[dict], model: type[BaseModel]) -> None:
    table = to_table(rows, model)
    atomic_write(path, lambda tmp: _write_table(table, tmp))


def read_parquet(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ---------------------------------------------------------------------------------------------------------
# The store: shards, stats, rejects and the manifest of one run folder


class RunStore:
    def __init__(self, root: str | Path):
        self.layout = RunLayout(root)
        self.root = self.layout.root

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
        with open(self.layout.lock, "a+") as f:
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

    # -- shards
    def has_shard(self, stage: str, index: int) -> bool:
        return self.layout.shard(stage, index).exists()

    def shard_indices(self, stage: str) -> list[int]:
        folder = self.layout.stage_dir(stage)
        if not folder.is_dir():
            return []
        return sorted(int(p.name[5:10]) for p in folder.glob("part-*.parquet"))

    def write_shard(self, stage: str, index: int, rows: list[dict], model: type[BaseModel],
                    rejects: list[dict], stats: dict[str, Any]) -> None:
        write_parquet(self.layout.rejects(stage, index), rejects, RejectRecord)
        atomic_write_json(self.layout.stats(stage, index), stats)
        write_parquet(self.layout.shard(stage, index), rows, model)  # last: marks the shard done

    def shard_rows(self, stage: str, index: int) -> int:
        """Rows in a finished shard, from its Parquet footer (no data is read)."""
        return pq.ParquetFile(self.layout.shard(stage, index)).metadata.num_rows

    def read_shard(self, stage: str, index: int) -> list[dict]:
        return read_parquet(self.layout.shard(stage, index))

    def read_stage(self, stage: str) -> list[dict]:
        return [row for i in self.shard_indices(stage) for row in self.read_shard(stage, i)]

    def read_stats(self, stage: str, index: int) -> dict:
        """One finished shard's stats ({} where a shard has none)."""
        path = self.layout.stats(stage, index)
        return json.loads(path.read_text()) if path.exists() else {}

    def shard_stats(self, stage: str) -> list[dict]:
        """The stats of every finished shard (a shard without its stats file counts as empty)."""
        return [self.read_stats(stage, i) for i in self.shard_indices(stage)]

    def write_rejects(self, stage: str, index: int, rejects: list[dict]) -> None:
        write_parquet(self.layout.rejects(stage, index), rejects, RejectRecord)

    def read_rejects(self, stage: str | None = None) -> list[dict]:
        folder = self.layout.rejects_dir()
        pattern = f"{stage}/part-*.parquet" if stage else "*/part-*.parquet"
        return [row for p in sorted(folder.glob(pattern)) for row in read_parquet(p)]

    # -- the manifest
    def read_manifest(self) -> dict | None:
        path = self.layout.manifest
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path}: damaged manifest, so nothing says this folder is a cai-pipeline run and "
                            "--restart will not clear it; move the folder aside and run again, or choose another "
                            "out_dir") from None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.layout.manifest, manifest)

    # -- what the folder holds, and clearing it
    def foreign_entries(self) -> list[str]:
        """Entries of a folder that is not (yet) one of our runs: anything but our lock file. [] when the folder
        is empty, missing, or carries this project's manifest."""
        if not self.root.is_dir():
            return []
        manifest = self.read_manifest()
        if manifest is not None and manifest.get("package") == PACKAGE:
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name not in (".lock", ".write-test"))

    def clear(self, stage_entries: Iterable[str]) -> list[str]:
        """For --restart: remove the entries the layout owns (the stages' own: stages.owned_entries()), in a
        folder that carries our manifest. Anything else in the folder stays. Returns the names removed."""
        manifest = self.read_manifest()
        if manifest is None or manifest.get("package") != PACKAGE:
            raise UserError(f"--restart: {self.root} has no cai-pipeline manifest.json, so nothing in it is ours "
                            "to delete; choose a new out_dir")
        removed = []
        for path in self.layout.owned(stage_entries):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(path.name)
        return removed
