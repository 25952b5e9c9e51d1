"""Resumable training state: all a run needs to go on exactly where it stopped (nanoGPT's checkpoint block).

    <log_dir>/state/step-00000050/
        weights.safetensors   the trainable parameters, by name (the base weights of a LoRA run come from
                              train.model again, unchanged)
        trainer.pt            optimizer and scheduler state, every process's RNG states, the epoch's data
                              order, the reference log-probs (so a resumed DPO run needs no reference pass)
        metrics.jsonl         metrics.jsonl as it was after this step
        state.json            step, epoch and position, processes, the stage's fingerprint, progress counters

A state is written into a temporary folder and renamed into place (store.atomic_folder): a kill during a
save leaves the states before it whole, and a half-written folder is never taken for one. Only the process
of rank 0 writes; every process reads. A state made with other settings is refused, naming what changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cai_pipeline import store
from cai_pipeline.errors import UserError
from cai_pipeline.fingerprint import changed_keys, first_keys
from cai_pipeline.store import TrainLayout

log = logging.getLogger(__name__)

FORMAT = 1
# train settings that change how often or how much is kept, never what is trained: a run may resume with others
OPERATIONAL = ("save_every", "keep_states", "keep_final_state", "plots")


def capture_rng() -> dict:
    """This process's RNG states as plain values (safe to load with torch.load(weights_only=True))."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in lm.named_parameters() if p.requires_grad}


@dataclass
class Saved:
    """A state as read back: state.json's fields, trainer.pt's contents, and the metrics lines."""

    path: Path
    info: dict
    trainer: dict
    metrics: list[str]

    @property
    def step(self) -> int:
        return self.info["step"]

    def load_weights(self, lm: torch.nn.Module) -> None:
        from safetensors.torch import load_file

        saved = load_file(self.path / "weights.safetensors")
        params = trainable(lm)
        if saved.keys() != params.keys():
            raise UserError(f"{self.path}: its weights do not fit this model ({len(saved)} tensors for "
                            f"{len(params)} trainable parameters); `cai train CONFIG --restart` starts afresh")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])


class TrainStates:
    """The states folder of one training: save (atomically), keep the newest K, find the one to resume."""

    def __init__(self, layout: TrainLayout, keep: int):
        self.layout, self.keep = layout, keep

    def steps(self) -> list[int]:
        """Steps of the whole states on disk, oldest first (a folder without our state.json is not one)."""
        folder = self.layout.states
        if not folder.is_dir():
            return []
        return sorted(int(p.name[5:]) for p in folder.glob("step-*") if _STATE.fullmatch(p.name) and _is_state(p))

    def tidy(self) -> None:
        """Remove what a killed save or prune left behind: the hidden folders atomic_folder and prune name
        (`.step-00000004.tmp`, `.old`, `.deleting`), and nothing else — train.log_dir may be a user's folder."""
        if self.layout.states.is_dir():
            for p in self.layout.states.iterdir():
                if _LEFTOVER.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)

    def clear(self) -> None:
        """Remove every state (a state folder is ours: our marker, or a state.json of ours), what saves left
        behind, then the states folder if that left it empty. Anything else in it stays."""
        folder = self.layout.states
        if not folder.is_dir() or folder.is_symlink():
            return
        self.tidy()
        for p in folder.glob("step-*"):
            if _STATE.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and _is_state(p):
                shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty

    def save(self, step: int, *, lm, optimizer, scheduler, rng: list[dict], order: np.ndarray, refs: dict,
             metrics: list[str], info: dict) -> Path:
        """Write the state after `step` (rank 0 only), then drop all but the newest `keep`."""
        from safetensors.torch import save_file

        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                   "order": torch.from_numpy(np.asarray(order)), "refs": refs}

        def write(tmp: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in trainable(lm).items()}, tmp / "weights.safetensors")
            torch.save(trainer, tmp / "trainer.pt")
            (tmp / "metrics.jsonl").write_text("".join(metrics))
            (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "step": step, **info}, indent=2) + "\n")

        path = store.atomic_folder(self.layout.state(step), write)
        self.prune()
        return path

    def prune(self) -> None:
        for step in self.steps()[: -self.keep]:
            path = self.layout.state(step)
            doomed = path.with_name(f".{path.name}.deleting")
            path.rename(doomed)  # hidden at once: a kill during the removal never leaves a partial state
            shutil.rmtree(doomed, ignore_errors=True)

    def latest(self, fingerprint: dict, world: int) -> Saved | None:
        """The newest state, if one exists; a UserError if it was made with other settings or processes."""
        for step in reversed(self.steps()):
            path = self.layout.state(step)
            try:
                info = json.loads((path / "state.json").read_text())
                trainer = torch.load(path / "trainer.pt", weights_only=True)
                metrics = (path / "metrics.jsonl").read_text().splitlines(keepends=True)
            except (OSError, ValueError, RuntimeError) as e:  # a damaged state: the one before it may do
                log.warning("%s: unreadable (%s); trying an older state", path, e)
                continue
            check_compatible(path, info, fingerprint, world)
            return Saved(path, info, trainer, metrics)
        return None


_STATE = re.compile(r"step-\d{8}")
_LEFTOVER = re.compile(r"\.step-\d{8}\.(tmp|old|deleting)")


def _is_state(path: Path) -> bool:
    if store.folder_is_ours(path):
        return True
    try:  # a state written before states carried the marker
        return "format" in json.loads((path / "state.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_compatible(path: Path, info: dict, fingerprint: dict, world: int) -> None:
    changed = [k for k in changed_keys(info.get("fingerprint", {}), fingerprint)
               if k.rsplit(".", 1)[-1] not in OPERATIONAL]
    if info.get("format") != FORMAT:
        changed.append(f"state format {info.get('format')}")
    if info.get("world") != world:
        changed.append(f"processes {info.get('world')} → {world}")
    if changed:
        raise UserError(f"{path}: a resumable training state made with other settings or inputs ({first_keys(changed)}); "
                        "run with the same ones to resume it, or `cai train CONFIG --restart` to discard it")
