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
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from cai_pipeline.errors import UserError
from cai_pipeline.records import RejectRecord, to_table

PACKAGE = "cai-pipeline"  # the manifest's "package": what marks a folder as one of our runs
# Written into every folder atomic_folder makes (checkpoints, training states, the converted model) and into a
# training's log folder: the only thing that lets us replace or write into an existing folder that is not
# empty. A folder without it may be a user's, a base model, or a run: never ours to replace.
MARKER = "cai-pipeline.json"


class RunLayout:
    """Every path of a run folder. No other module builds one, so a path changes in one place.

    ```
    manifest.json  constitution.yaml  .lock  .workers-probe  report.html
    <stage>/part-00000.parquet        sample, revise, pairs, judge: rows only
    stats/<stage>/part-00000.json     per-shard counts and timings
    keys/<stage>/part-00000.json      per-shard content keys of its rows (rowkeys.py): what `--reuse` matches
    rejects/<stage>/part-00000.parquet
    datasets/sft/  datasets/preferences/  datasets/README.md
    checkpoint/                       the trained model (a plain Hugging Face folder)
    train/  metrics.jsonl  summary.json  plots/*.png  state/
    audit/  responses.parquet  verdicts.parquet  compliance.parquet  summary.json  README.md  plots/*.png
    judge-check/  summary.json  README.md  shifts.png       `cai judge-check CONFIG`: the judge's bias profile
    rounds/NN-kind/                   (each round a run folder of its own)
    iterate.json                      `cai iterate`: the rounds, their models, audits and gate decisions
    vs-base/NN-kind/                  `cai iterate`: a round's model audited against the base (a run folder)
    batches/<key>.json                engine.batch: each OpenAI batch's file id, batch id and state (resume)
    ```
    """

    # Entries that belong to no stage (the stages' own come from the stage list: stages.owned_entries()).
    FIXED = ("stats", "keys", "rejects", "rounds", "report.html", "iterate.json", "vs-base", "constitution.yaml",
             "manifest.json", ".workers-probe", "judge-check", "batches")

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

    @property
    def batches(self) -> Path:
        """engine.batch: one state file per batch sent, so a killed run polls its batch instead of paying twice."""
        return self.root / "batches"

    # -- sharded stages
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def shard(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / f"part-{index:05d}.parquet"

    def stats_dir(self, stage: str) -> Path:
        return self.root / "stats" / stage

    def stats(self, stage: str, index: int) -> Path:
        return self.stats_dir(stage) / f"part-{index:05d}.json"

    def keys(self, stage: str, index: int) -> Path:
        return self.root / "keys" / stage / f"part-{index:05d}.json"

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
    def audit_compliance(self) -> Path:
        return self.audit_dir / "compliance.parquet"

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

    def base_audit_dirs(self) -> list[Path]:
        """The vs-base/ audit folders that exist, in round order."""
        return sorted((self.root / "vs-base").glob("*"))

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


def folder_is_ours(path: Path) -> bool:
    """The folder holds our marker (MARKER): cai-pipeline wrote it and may replace or write into it."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("package") == PACKAGE
    except (OSError, ValueError, AttributeError):
        return False


def mark_folder(path: Path) -> None:
    """Put our marker in a folder we write into (a training's log folder), so a later run may write there again."""
    if not folder_is_ours(path):
        atomic_write_json(Path(path) / MARKER, _marker())


def _marker() -> dict:
    from cai_pipeline import __version__

    return {"package": PACKAGE, "version": __version__,
            "note": "written by cai-pipeline: this folder is one it made, and may replace"}


def replace_problem(path: Path) -> str | None:
    """Why we may not write a folder at `path` (None: a new path, an empty folder, or one holding our marker)."""
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_dir():
        return "is a file, not a folder"
    if folder_is_ours(path):
        return None
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return None
    listed = ", ".join(entries[:4]) + (" …" if len(entries) > 4 else "")
    return f"holds files cai-pipeline did not write ({listed}; no {MARKER})"


def atomic_folder(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_folder)`, then swap it in for `path`: a crash never leaves half a folder where a reader
    (an engine loading a checkpoint) would find it. The old folder is removed only once the new one is whole,
    and only if it is ours (replace_problem): callers check first, with the config key to name; this is the
    guard that holds whoever calls. The new folder carries our marker."""
    path = Path(path)
    problem = replace_problem(path)
    if problem:
        raise UserError(f"{path}: not replaced: it {problem}; move it away, or write to a new or empty folder "
                        "— nothing was changed")
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_aside(old)
        tmp.mkdir(parents=True)
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(_marker(), indent=2) + "\n")
        if path.exists() or path.is_symlink():
            path.rename(old)
        tmp.rename(path)
        _remove_aside(old)
    except OSError as e:
        raise _disk_error(path, e) from None
    return path


def _remove_aside(old: Path) -> None:
    """Remove a folder atomic_folder moved aside (a symlink is unlinked: its target was never ours)."""
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: Path, key: str, *, ours: Callable[[Path], bool] | None = None, what: str = "",
                      force: bool = False) -> None:
    """A file a user named for us to write (`cai report -o`, `judge-eval --out`, `constitution import -o`): a new
    path, or a file of the kind we write (`ours`, e.g. a report carrying our generator tag, described by `what`);
    anything else only with --force, and a folder never."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}: {path} is a folder; name a file to write — nothing was changed")
    if not path.exists() and not path.is_symlink():
        return
    if not force and not (ours is not None and path.is_file() and ours(path)):
        mine = f" and is not {what}" if what else ""
        raise UserError(f"{key}: {path} already exists{mine}; choose another path, or pass --force to overwrite it "
                        "— nothing was changed")


def file_starts_with(path: Path, needle: bytes, size: int = 4096) -> bool:
    """`needle` appears in the first `size` bytes (our generator tag near the top of a file we wrote)."""
    try:
        with open(path, "rb") as f:
            return needle in f.read(size)
    except OSError:
        return False


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ---------------------------------------------------------------------------------------------------------
# Parquet, and what a written file was: its size and content hash, to tell a damaged file from a whole one


def parquet_bytes(rows: list[dict], model: type[BaseModel]) -> bytes:
    """A Parquet file's bytes, made in memory so its size and hash are known before it is written."""
    table, sink = to_table(rows, model), pa.BufferOutputStream()
    if table.num_rows:
        pq.write_table(table, sink)
    else:  # no row group at all: `datasets` reads a row group of 0 rows as "batch size 0" and fails
        pq.ParquetWriter(sink, table.schema).close()
    return sink.getvalue().to_pybytes()


def digest(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_digest(path: Path) -> dict:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def file_problem(path: Path, record: dict | None, *, full: bool = False) -> str | None:
    """What is wrong with a file we wrote, or None: missing, not the size recorded when it was written, a
    Parquet file whose footer does not read (the cheap checks: a stat and the file's last bytes), and with
    `full` a content hash other than the recorded one (reads the whole file)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if isinstance(record, dict) and record.get("bytes") is not None and size != record["bytes"]:
        return f"{size} bytes where {record['bytes']} were written"
    if path.suffix == ".parquet":
        try:
            pq.read_metadata(path)
        except (pa.ArrowException, OSError) as e:
            return f"not a whole Parquet file: {_short(e)}"
    if full and isinstance(record, dict) and record.get("sha256") and file_digest(path)["sha256"] != record["sha256"]:
        return "its content is not what was written (sha256 differs)"
    return None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:120]


def write_parquet(path: Path, rows: list[dict], model: type[BaseModel]) -> dict:
    """Write rows as a Parquet file, atomically; returns its size and content hash."""
    data = parquet_bytes(rows, model)
    atomic_write_bytes(path, data)
    return digest(data)


def read_parquet(path: Path) -> list[dict]:
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise damaged_file(path, e) from None


def damaged_file(path: Path, e: BaseException) -> UserError:
    # pyarrow's message names the file again and says what it could not do: keep the first thing it found
    text = str(e).replace(f"'{path}'", "").replace(str(path), "").replace("Could not open Parquet input source :", "")
    reason = _short(Exception(text.strip().split(". ")[0]))
    return UserError(f"{path}: cannot be read ({reason}); if a run made it, run that run's `cai run` (or `cai "
                     "iterate`) command again to redo it (`cai verify RUN` lists every damaged file)")


# ---------------------------------------------------------------------------------------------------------
# The store: shards, stats, rejects and the manifest of one run folder


class RunStore:
    def __init__(self, root: str | Path):
        self.layout = RunLayout(root)
        self.root = self.layout.root

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # a fresh name of our own (never a file of the user's that happens to be called so)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
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
                    rejects: list[dict], stats: dict[str, Any], keys: dict | None = None) -> dict[str, Any]:
        """Write one finished shard; returns its stats as written: with the size and sha256 of its data and
        rejects parts (`files`), which the stats file holds so a damaged part is told from a whole one.
        `keys`: the rows' content keys (rowkeys.py), kept beside the shard for a later `--reuse`."""
        data, rejected = parquet_bytes(rows, model), parquet_bytes(rejects, RejectRecord)
        stats = {**stats, "files": {"data": digest(data), "rejects": digest(rejected)}}
        atomic_write_bytes(self.layout.rejects(stage, index), rejected)
        if keys is not None:
            atomic_write_json(self.layout.keys(stage, index), keys)
        atomic_write_json(self.layout.stats(stage, index), stats)
        atomic_write_bytes(self.layout.shard(stage, index), data)  # last: marks the shard done
        return stats

    def shard_rows(self, stage: str, index: int) -> int:
        """Rows in a finished shard, from its Parquet footer (no data is read)."""
        path = self.layout.shard(stage, index)
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise damaged_file(path, e) from None

    def read_shard(self, stage: str, index: int) -> list[dict]:
        return read_parquet(self.layout.shard(stage, index))

    def read_stage(self, stage: str) -> list[dict]:
        return [row for i in self.shard_indices(stage) for row in self.read_shard(stage, i)]

    def read_stats(self, stage: str, index: int) -> dict:
        """One finished shard's stats ({} where a shard has none, or its file is damaged: the run's integrity
        check redoes such a shard before anything reads it)."""
        path = self.layout.stats(stage, index)
        try:
            stats = json.loads(path.read_text()) if path.exists() else {}
        except (ValueError, OSError):
            return {}
        return stats if isinstance(stats, dict) else {}

    def read_keys(self, stage: str, index: int) -> dict:
        """One shard's content keys ({} where it has none or the file is unreadable: nothing of it is reused)."""
        path = self.layout.keys(stage, index)
        try:
            keys = json.loads(path.read_text()) if path.exists() else {}
        except (ValueError, OSError):
            return {}
        return keys if isinstance(keys, dict) else {}

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
            manifest = json.loads(path.read_text())
        except (ValueError, OSError):  # not JSON, not UTF-8, unreadable
            manifest = None
        if not isinstance(manifest, dict):  # `[]`, `3`, `"x"`: no run's record either
            raise UserError(f"{path}: damaged manifest, so nothing says this folder is a cai-pipeline run and "
                            "--restart will not clear it; move the folder aside and run again, or choose another "
                            "out_dir") from None
        return manifest

    def is_run(self) -> bool:
        """The folder carries this project's manifest (a `{}` or another tool's manifest.json does not count)."""
        manifest = self.read_manifest() if self.root.is_dir() else None
        return manifest is not None and manifest.get("package") == PACKAGE

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.layout.manifest, manifest)

    # -- what the folder holds, and clearing it
    def foreign_entries(self) -> list[str]:
        """Entries of a folder that is not (yet) one of our runs: anything but our lock file. [] when the folder
        is empty, missing, or carries this project's manifest."""
        if not self.root.is_dir() or self.is_run():
            return []
        return sorted(p.name for p in self.root.iterdir() if not (p.name == ".lock" and self._our_lock(p)))

    @staticmethod
    def _our_lock(path: Path) -> bool:
        """A `.lock` a run of ours left (empty, or `pid N`): the lock truncates it, so a user's must not pass."""
        try:
            text = path.read_text() if path.is_file() and path.stat().st_size < 64 else None
        except (OSError, UnicodeDecodeError):
            return False
        return text is not None and (not text.strip() or text.startswith("pid "))

    def clear(self, stage_entries: Iterable[str]) -> list[str]:
        """For --restart: remove the entries the layout owns (the stages' own: stages.owned_entries()), in a
        folder that carries our manifest. Anything else in the folder stays. Returns the names removed."""
        if not self.is_run():
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


def open_run(path: str | Path) -> RunStore:
    """An existing run folder (or `cai iterate` folder) to read; one line when it is not one of ours."""
    store = RunStore(path)
    if not store.is_run():
        raise UserError(f"{path}: not a run folder (no cai-pipeline manifest.json); give the out_dir of a `cai run`")
    return store
