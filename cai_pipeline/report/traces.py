"""Traces: every prompt of a run followed from its text to the dataset rows it became, or to the reject that
stopped it. Rows are joined by ids (prompt_id, sample_idx, pair_id), never by position.

One trace, as the report embeds it (texts appear once; a pair points at the sample texts it compares):

```
{"id": prompt_id, "prompt": [[role, content], ...],
 "samples": [{"i": sample_idx, "text": initial response, "finish": finish_reason, "tokens": n,
              "rounds": [{"p": principle, "critique": str, "revision": str (as the model wrote it),
                          "cleaned": true (only when a preamble was cut), "kept": why the revision was
                          not used (only then), "truncated": true (the revision hit max_tokens),
                          "span": [start, length] of the revision that became the text (when a preamble
                          was cut), "check": [passed before, passed after, reason before] (the drawn
                          principle's check, when it has one), "skipped": true (it already passed)}],
              "final": str (only where the rounds do not yield it), "final_truncated": true (when it is),
              "sft": "train" | "test" (its SFT row),
              "reject": [stage, reason, detail]}],
 "pairs": [{"id": pair_id, "origin": "sampled" | "revision", "a": ref, "b": ref,
            "verdicts": [[principle, weight, p_a_first, p_a_second, reasoning_first, reasoning_second]]
                        (trailing null reasonings left out),
            "checks": {principle: [source "check" | "judge", check on a, check on b]} (checkable ones),
            "p_a": float, "consistent": bool, "pref": [split, "a" | "b", p_chosen], "reject": [...],
            "truncated": ["a", "b"] (the sides cut at max_tokens, when any)}],
 "rejects": [[stage, key, reason, detail], ...]}     rejects that name the prompt but no sample or pair
```

A ref is `["s", i]` (sample i's response), `["f", i]` (sample i's final revision) or the text itself.
Principles are indices into the report's principle list (the `Principles` interner).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from cai_pipeline.stages.revise import clean_revision
from cai_pipeline.store import RunStore, read_parquet

NOT_ATTACHED = ("prompts",)  # rejected before a prompt had an id of its own: listed, not traced


class Principles:
    """Principle ids → small indices, in first-seen order (the constitution's order first)."""

    def __init__(self, ids: Iterable[str] = ()):
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        for pid in ids:
            self.index(pid)

    def index(self, pid: str) -> int:
        if pid not in self._index:
            self._index[pid] = len(self.ids)
            self.ids.append(pid)
        return self._index[pid]


@dataclass
class RunRows:
    """A run folder's rows, each stage read once."""

    samples: list[dict] = field(default_factory=list)
    revised: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    judged: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    sft: dict[str, list[dict]] = field(default_factory=dict)  # split → rows
    prefs: dict[str, list[dict]] = field(default_factory=dict)


def read_rows(store: RunStore) -> RunRows:
    layout = store.layout

    def split_rows(name: str) -> dict[str, list[dict]]:
        return {split: [r for f in layout.split_files(name, split) for r in read_parquet(f)]
                for split in ("train", "test")}

    return RunRows(samples=store.read_stage("sample"), revised=store.read_stage("revise"),
                   pairs=store.read_stage("pairs"), judged=store.read_stage("judge"),
                   rejects=store.read_rejects(), sft=split_rows("sft"), prefs=split_rows("preferences"))


# ---------------------------------------------------------------------------------------------------------
# One revision chain: the text before and after each round


def chain(initial: str, rounds: list[dict], principles: Principles) -> tuple[list[dict], str]:
    """The rounds as the report shows them, and the text the chain ends with. A round's new text is its
    revision with the boilerplate cut (`clean_revision`, as the revise stage did), or the text before it when
    the revision was not kept; `span` locates the cut text inside the revision, so it is not stored twice."""
    before, out = initial, []
    for r in rounds:
        entry = {"p": principles.index(r["principle_id"]), "critique": r["critique"], "revision": r["revision"]}
        if r["cleaned"]:  # flags only where set: they are the exception, and a trace's bytes add up
            entry["cleaned"] = True
        if r.get("truncated"):
            entry["truncated"] = True
        if r.get("check_before"):  # the drawn principle's check: passed before, after, and why it failed before
            entry["check"] = [r["check_before"]["passed"], r["check_after"]["passed"], r["check_before"]["reason"]]
        if r.get("skipped"):
            entry["skipped"] = True
        if r["kept_previous"] is not None:
            entry["kept"] = r["kept_previous"]
        else:
            after = clean_revision(r["revision"])[0]
            if after != r["revision"]:
                start = r["revision"].find(after)
                entry["span" if start >= 0 else "after"] = [start, len(after)] if start >= 0 else after
            before = after
        out.append(entry)
    return out, before


# ---------------------------------------------------------------------------------------------------------
# Building the traces


class TraceSet:
    """Traces keyed by prompt_id, in the order prompts first appear in the run's shards."""

    def __init__(self, principles: Principles):
        self.principles = principles
        self.by_id: dict[str, dict] = {}
        self.position: dict[str, int] = {}

    def trace(self, pid: str, prompt: list[dict] | None) -> dict:
        t = self.by_id.get(pid)
        if t is None:
            t = self.by_id[pid] = {"id": pid, "prompt": [], "samples": {}, "pairs": {}, "rejects": []}
            self.position[pid] = len(self.position)
        if prompt and not t["prompt"]:
            t["prompt"] = [[m["role"], m["content"]] for m in prompt]
        return t

    def sample(self, pid: str, idx: int, row: dict) -> dict:
        samples = self.trace(pid, row.get("prompt"))["samples"]
        if idx not in samples:
            samples[idx] = {"i": idx, "text": row.get("response", row.get("initial", "")),
                            "finish": row.get("finish_reason"), "tokens": row.get("n_tokens")}
        return samples[idx]

    def add_revision(self, row: dict) -> dict:
        s = self.sample(row["prompt_id"], row["sample_idx"], row)
        s["rounds"], end = chain(s["text"] if row.get("initial") is None else row["initial"], row.get("rounds") or [],
                                 self.principles)
        if "final" in row and row["final"] != end:  # the stage's own word wins over our reconstruction
            s["final"] = row["final"]
        if row.get("final_truncated"):
            s["final_truncated"] = True
        s["_final"] = row.get("final", end)
        return s

    def pair(self, row: dict) -> dict:
        pairs = self.trace(row["prompt_id"], row.get("prompt"))["pairs"]
        p = pairs.get(row["pair_id"])
        if p is None:
            p = pairs[row["pair_id"]] = {"id": row["pair_id"], "origin": row.get("origin"), "_a": row.get("a", ""),
                                         "_b": row.get("b", ""), "_ai": row.get("a_idx"), "_bi": row.get("b_idx")}
            cut = [side for side in ("a", "b") if row.get(f"{side}_truncated")]
            if cut:
                p["truncated"] = cut
        if row.get("verdicts"):
            p["verdicts"] = [_trim([self.principles.index(v["principle_id"]), v["weight"], _r(v["p_a_first"]),
                                    _r(v["p_a_second"]), v.get("reasoning_first"), v.get("reasoning_second")])
                             for v in row["verdicts"]]
            p["p_a"], p["consistent"] = _r(row["p_a"]), row.get("consistent")
            checked = {str(self.principles.index(v["principle_id"])): [v.get("source", "judge"), v.get("check_a"),
                                                                        v.get("check_b")]
                       for v in row["verdicts"] if v.get("check_a") is not None}
            if checked:
                p["checks"] = checked
        return p

    def add_reject(self, rej: dict) -> int | None:
        """Attach a reject to the pair, sample or prompt it names; the trace's position, or None."""
        if rej["stage"] in NOT_ATTACHED:
            return None
        try:
            row = json.loads(rej["row"]) if rej["row"] else {}
        except json.JSONDecodeError:
            row = {}
        row = row if isinstance(row, dict) else {}
        pid = row.get("prompt_id") or rej["key"].split("/")[0]
        row = {**row, "prompt_id": pid}
        mark = [rej["stage"], rej["reason"], rej["detail"]]
        t = self.trace(pid, row.get("prompt"))
        if "pair_id" in row:
            self.pair(row)["reject"] = mark
        elif "sample_idx" in row:
            s = self.add_revision(row) if "rounds" in row else self.sample(pid, row["sample_idx"], row)
            s["reject"] = mark
        else:
            t["rejects"].append([rej["stage"], rej["key"], rej["reason"], rej["detail"]])
        return self.position[pid]

    def add_datasets(self, sft: dict[str, list[dict]], prefs: dict[str, list[dict]]) -> None:
        for split, rows in sft.items():
            for r in rows:
                t = self.by_id.get(r["prompt_id"])
                if t and r["sample_idx"] in t["samples"]:
                    t["samples"][r["sample_idx"]]["sft"] = split
        for split, rows in prefs.items():
            for r in rows:
                t = self.by_id.get(r["prompt_id"])
                p = t["pairs"].get(r["pair_id"]) if t else None
                if p is not None:
                    side = "a" if r["chosen"][-1]["content"] == p["_a"] else "b"
                    p["pref"] = [split, side, None if r["p_chosen"] is None else _r(r["p_chosen"])]


def _trim(verdict: list) -> list:
    """A verdict without its trailing nulls (no reasoning: the usual case)."""
    while len(verdict) > 4 and verdict[-1] is None:
        verdict.pop()
    return verdict


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _ref(text: str, candidates: list[tuple[str, int | None]], samples: dict) -> list | str:
    for kind, idx in candidates:
        s = samples.get(idx)
        if s is not None and text == (s["text"] if kind == "s" else s.get("_final")):
            return [kind, idx]
    return text


def finish(t: dict) -> dict:
    """A built trace in its embedded form: samples and pairs as sorted lists, pair texts as refs."""
    samples = t["samples"]
    pairs = []
    for p in sorted(t["pairs"].values(), key=lambda p: (p["origin"] != "sampled", p["_ai"] or 0, p["_bi"] or 0)):
        # revision pairs compare a's final revision with b's initial response; sampled pairs two responses
        a_first = [("f", p["_ai"]), ("s", p["_ai"])] if p["origin"] == "revision" else [("s", p["_ai"])]
        out = {k: v for k, v in p.items() if not k.startswith("_")}
        out["a"], out["b"] = _ref(p["_a"], a_first, samples), _ref(p["_b"], [("s", p["_bi"]), ("f", p["_bi"])], samples)
        pairs.append(out)
    ordered = [{k: v for k, v in s.items() if not k.startswith("_")} for _, s in sorted(samples.items())]
    return {"id": t["id"], "prompt": t["prompt"], "samples": ordered, "pairs": pairs, "rejects": t["rejects"]}


def build_traces(rows: RunRows, principles: Principles) -> tuple[list[dict], list[list]]:
    """(traces in run order, rejects as [stage, key, reason, detail, trace position or the row's JSON])."""
    ts = TraceSet(principles)
    for r in rows.samples:
        ts.sample(r["prompt_id"], r["sample_idx"], r)
    for r in rows.revised:
        ts.add_revision(r)
    for r in [*rows.pairs, *rows.judged]:
        ts.pair(r)
    listed = []
    for rej in rows.rejects:
        where = ts.add_reject(rej)
        listed.append([rej["stage"], rej["key"], rej["reason"], rej["detail"], rej["row"] if where is None else where])
    ts.add_datasets(rows.sft, rows.prefs)
    return [finish(t) for t in ts.by_id.values()], listed
