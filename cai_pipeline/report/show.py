"""`cai show RUN PROMPT_ID`: one trace in the terminal, the same one the report's trace viewer shows.

Model text is untrusted here too: control characters (an escape sequence can retitle a terminal, move the
cursor or hide lines) and bidirectional overrides are printed as visible escapes, and every string goes to
rich as a Text, never as markup.
"""

from __future__ import annotations

import difflib
import re

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cai_pipeline.errors import UserError
from cai_pipeline.report.build import open_run
from cai_pipeline.report.traces import Principles, build_traces, read_rows

_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str | None) -> str:
    """Text as it may reach a terminal: control and bidi-override characters written as \\x.. / \\u.... escapes."""
    def escaped(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    return _UNSAFE.sub(escaped, text or "")


def find_trace(traces: list[dict], prompt_id: str) -> dict:
    """The trace with this prompt_id, or the one whose id starts with it."""
    exact = [t for t in traces if t["id"] == prompt_id]
    if exact:
        return exact[0]
    near = [t for t in traces if t["id"].startswith(prompt_id)] if prompt_id else []
    if len(near) == 1:
        return near[0]
    if near:
        raise UserError(f"prompt id {safe(prompt_id)!r} matches {len(near)} traces "
                        f"({', '.join(safe(t['id']) for t in near[:4])}, …); give more of it")
    examples = ", ".join(safe(t["id"]) for t in traces[:3])
    raise UserError(f"no trace with prompt id {safe(prompt_id)!r} in this run ({len(traces)} traces"
                    + (f", e.g. {examples}" if examples else "") + "); the report's trace list shows them all")


def round_texts(sample: dict) -> list[tuple[str, str]]:
    """(text before, text after) each round: a kept revision, its boilerplate cut, replaces the text."""
    before, out = sample["text"], []
    for r in sample.get("rounds", []):
        if r.get("kept"):
            after = before
        elif "after" in r:
            after = r["after"]
        elif "span" in r:
            after = r["revision"][r["span"][0] : r["span"][0] + r["span"][1]]
        else:
            after = r["revision"]
        out.append((before, after))
        before = after
    return out


def word_diff(before: str, after: str, color: bool) -> Text:
    """Word-level diff; without colour, git's word-diff marks: [-removed-] {+added+}."""
    a, b = re.findall(r"\s+|\S+", before), re.findall(r"\s+|\S+", after)
    out = Text()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(safe("".join(a[i1:i2])))
            continue
        if i2 > i1:
            gone = safe("".join(a[i1:i2]))
            out.append(gone, style="red strike") if color else out.append(f"[-{gone}-]")
        if j2 > j1:
            new = safe("".join(b[j1:j2]))
            out.append(new, style="green") if color else out.append(f"{{+{new}+}}")
    return out


def _line(console: Console, label: str, text: str | Text, indent: int = 2) -> None:
    body = text if isinstance(text, Text) else Text(safe(text) if text else "(empty)")
    console.print(Text(" " * indent) + Text(f"{label}: ", style="bold") + body, highlight=False)


def ref_text(trace: dict, ref) -> str:
    """The text a pair side in the report's data stands for: a text as it is, or [kind, sample index] — kind "s" the
    sample as sampled, otherwise its final revision. The one reader of that format in Python (cai show, the tests)."""
    if not isinstance(ref, list):
        return ref
    sample = next(s for s in trace["samples"] if s["i"] == ref[1])
    texts = round_texts(sample)
    return sample["text"] if ref[0] == "s" else sample.get("final", texts[-1][1] if texts else sample["text"])


def _ref_label(ref) -> str:
    if not isinstance(ref, list):
        return "text"
    return f"sample {ref[1]}" + (" (final revision)" if ref[0] == "f" else "")


def print_sample(console: Console, sample: dict, principles: list[str], color: bool) -> None:
    flags = [f"finish {sample['finish']}", f"{sample['tokens']} tokens"] + ([f"SFT {sample['sft']}"] if "sft" in sample else [])
    console.print(Text(f"sample {sample['i']}", style="bold") + Text(" · " + " · ".join(safe(str(f)) for f in flags)))
    _line(console, "initial", sample["text"])
    texts = round_texts(sample)
    for k, r in enumerate(sample.get("rounds", [])):
        marks = (["preamble cut"] if r.get("cleaned") else []) + ([f"kept previous: {r['kept']}"] if r.get("kept") else [])
        marks += ["revision truncated"] if r.get("truncated") else []
        head = Text(f"  round {k + 1} · principle {safe(principles[r['p']])}", style="bold")
        console.print(head + Text("".join(f" [{safe(m)}]" for m in marks)))
        _line(console, "critique", r["critique"], 4)
        _line(console, "revision", r["revision"], 4)
        _line(console, "change", word_diff(*texts[k], color), 4)
    if sample.get("rounds") and sample.get("reject", [""])[0] != "revise":
        _line(console, "final" + (" [truncated]" if sample.get("final_truncated") else ""),
              sample.get("final", texts[-1][1]))
    if "reject" in sample:
        stage, reason, detail = sample["reject"]
        _line(console, "rejected", f"{reason} at {stage}: {detail}")


def print_pair(console: Console, trace: dict, pair: dict, principles: list[str]) -> None:
    cut = "".join(f" [{side} truncated]" for side in pair.get("truncated", []))
    console.print(Text(f"pair {safe(pair['id'])}", style="bold")
                  + Text(f" · {safe(pair['origin'])} · a = {_ref_label(pair['a'])}, b = {_ref_label(pair['b'])}{cut}"))
    if not isinstance(pair["a"], list) or not isinstance(pair["b"], list):
        _line(console, "a", ref_text(trace, pair["a"]))
        _line(console, "b", ref_text(trace, pair["b"]))
    if pair.get("verdicts"):
        table = Table(box=None, padding=(0, 2, 0, 2))
        for col in ("principle", "a as (A): P(A)", "P(B)", "a as (B): P(A)", "P(B)", "p(a≻b)"):
            table.add_column(col, justify="left" if col == "principle" else "right")
        for pi, _w, first, second, *_reasoning in pair["verdicts"]:
            cells = [first, 1 - first] + ([1 - second, second, (first + second) / 2] if second is not None else ["—", "—", first])
            table.add_row(Text(safe(principles[pi])), *(Text(f"{c:.3f}" if isinstance(c, float) else c) for c in cells))
        console.print(table)
        consistent = {True: "consistent", False: "order-inconsistent", None: "single order"}[pair.get("consistent")]
        _line(console, "soft label", f"p(a≻b) = {pair['p_a']:.4f} · {consistent}")
    if "pref" in pair:
        split, side, p = pair["pref"]
        _line(console, "dataset", f"preferences/{split}: chosen = {side}" + ("" if p is None else f", p_chosen {p:.4f}"))
    if "reject" in pair:
        stage, reason, detail = pair["reject"]
        _line(console, "rejected", f"{reason} at {stage}: {detail}")


def show(run_dir: str, prompt_id: str, console: Console | None = None) -> dict:
    """Print the trace of `prompt_id` (or a unique prefix of it); returns the trace."""
    store = open_run(run_dir)
    principles = Principles()
    traces, _ = build_traces(read_rows(store), principles)
    trace = find_trace(traces, prompt_id)
    console = console or Console(highlight=False)
    color = console.color_system is not None
    console.print(Text(f"trace {safe(trace['id'])}", style="bold underline"))
    for role, content in trace["prompt"]:
        _line(console, role, content)
    for sample in trace["samples"]:
        print_sample(console, sample, principles.ids, color)
    for pair in trace["pairs"]:
        print_pair(console, trace, pair, principles.ids)
    for stage, key, reason, detail in trace["rejects"]:
        _line(console, "rejected", f"{reason} at {stage} ({key}): {detail}")
    return trace
