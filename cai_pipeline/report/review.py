"""Human review of the judge: the verdicts the report's Review tab shows, the file it exports, and the same
sample as files for Label Studio and Argilla.

The sample is stratified by principle and by margin (|p − ½|: close, clear, confident), so a few dozen labels
cover every principle and both the verdicts the judge was unsure of and those it was sure of; within a stratum
the order is a hash of the item (the same sample every time). Each item is one principle's verdict on one pair.
Which response is shown as A is drawn per item too, so the person's own position bias cannot line up with the
judge's labels.

The Review tab exports one JSONL line per labelled item, a `ReviewLabel` (the **contract** between report.js,
which writes it, and `cai judge-eval --data FILE`, which reads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cai_pipeline.errors import UserError
from cai_pipeline.judging import order_average
from cai_pipeline.rng import rng_for, stable_id
from cai_pipeline.store import atomic_write_text, mark_folder, replace_problem

FORMAT = "cai-review/1"
SAMPLE = 60  # verdicts in a run's review: about an hour's labelling, enough for a κ interval of ±0.2 or so
MARGINS = ((0.1, "close"), (0.25, "clear"), (0.5, "confident"))


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str


class ReviewLabel(BaseModel):
    """One labelled verdict, as the Review tab exports it."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["cai-review/1"]
    run: str
    judge: str
    item: str  # pair_id/principle_id
    pair_id: str
    prompt_id: str
    principle_id: str
    question: str
    prompt: list[Turn]
    a: str
    b: str
    shown_first: Literal["a", "b"]  # the response the person saw as A
    human: Literal["a", "b", "tie", "skip"]
    p_a: float  # the judge's p(a ≻ b) under this principle, both orders averaged
    p_a_first: float
    p_a_second: float | None
    stratum: str
    labelled_at: str


# ---------------------------------------------------------------------------------------------------------
# The sample


def scored_pairs(rows) -> list[dict]:
    """Every pair the judge scored (report.traces.RunRows): those kept as labels and those rejected as too weak."""
    weak = []
    for rej in rows.rejects:
        if rej["stage"] == "judge" and rej["row"]:
            row = json.loads(rej["row"])
            if row.get("verdicts"):
                weak.append(row)
    return [*rows.judged, *weak]


def margin(p: float) -> str:
    return next(name for edge, name in MARGINS if abs(p - 0.5) < edge or edge == 0.5)


def _items(scored: list[dict], questions: dict[str, str], seed: int) -> list[dict]:
    out = []
    for pair in scored:
        for v in pair["verdicts"]:
            second = v["p_a_second"]
            p = v["p_a_first"] if second is None else order_average(v["p_a_first"], second)
            item = f"{pair['pair_id']}/{v['principle_id']}"
            out.append({"item": item, "pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"],
                        "principle_id": v["principle_id"], "question": questions.get(v["principle_id"], ""),
                        "prompt": [[m["role"], m["content"]] for m in pair["prompt"]], "a": pair["a"], "b": pair["b"],
                        "p_a": round(p, 4), "p_a_first": round(v["p_a_first"], 4),
                        "p_a_second": None if second is None else round(second, 4),
                        "stratum": f"{v['principle_id']} · {margin(p)}",
                        "shown_first": "a" if rng_for(seed, "review", item).random() < 0.5 else "b"})
    return out


def review_items(scored: list[dict], questions: dict[str, str], limit: int = SAMPLE, seed: int = 0) -> list[dict]:
    """Up to `limit` verdicts, taken in turn from each (principle, margin) stratum in a hashed order."""
    strata: dict[str, list[dict]] = {}
    for item in _items(scored, questions, seed):
        strata.setdefault(item["stratum"], []).append(item)
    queues = [sorted(s, key=lambda i: stable_id(seed, "review", i["item"])) for _, s in sorted(strata.items())]
    picked: list[dict] = []
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
    return picked


# ---------------------------------------------------------------------------------------------------------
# The exported labels


def is_review_file(path: Path) -> bool:
    """Whether a --data file is a Review tab export (its first line says so)."""
    if not path.is_file() or not path.name.endswith(".jsonl"):
        return False
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        return json.loads(first).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_review(path: Path) -> list[ReviewLabel]:
    labels = []
    # split on newlines only: str.splitlines() also breaks at U+2028, which a model's text may hold
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            labels.append(ReviewLabel.model_validate_json(line))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(the line)"
            raise UserError(f"{path}:{lineno}: not a review label ({where}: {first['msg']}); export the labels "
                            "again from the report's Review tab") from None
    if not labels:
        raise UserError(f"{path}: no labels in the file; label some verdicts in the report's Review tab first")
    return labels


# ---------------------------------------------------------------------------------------------------------
# Label Studio and Argilla


LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response is better?"/>
  <Text name="question" value="$question"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Response A"/>
  <Text name="response_a" value="$response_a"/>
  <Header value="Response B"/>
  <Text name="response_b" value="$response_b"/>
  <Choices name="preference" toName="response_a" choice="single" showInline="true" required="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="tie"/>
  </Choices>
</View>
"""

ARGILLA_README = """# Review in Argilla

`records.jsonl` holds one record per verdict, keyed by the field, metadata and id names below; the judge's answers
are kept apart, in `../judge.jsonl`, so the review is blind. With Argilla 2 (`pip install argilla`):

```python
import json
import argilla as rg

client = rg.Argilla(api_url="http://localhost:6900", api_key="...")
settings = rg.Settings(
    fields=[rg.TextField(name=n) for n in ("question", "prompt", "response_a", "response_b")],
    questions=[rg.LabelQuestion(name="preference", labels=["A", "B", "tie"])],
    metadata=[rg.TermsMetadataProperty(name="principle_id"), rg.TermsMetadataProperty(name="stratum")],
)
dataset = rg.Dataset(name="cai-judge-review", settings=settings, client=client)
dataset.create()
dataset.records.log([json.loads(line) for line in open("records.jsonl")])
```
"""


def _shown(item: dict) -> tuple[str, str]:
    return (item["a"], item["b"]) if item["shown_first"] == "a" else (item["b"], item["a"])


def _fields(item: dict) -> dict:
    from cai_pipeline.templates import transcript

    first, second = _shown(item)
    return {"question": item["question"], "prompt": transcript({"role": r, "content": c} for r, c in item["prompt"]),
            "response_a": first, "response_b": second}


def write_review_files(folder: Path, items: list[dict], run: str, judge: str) -> list[Path]:
    """label-studio/{tasks.json, config.xml}, argilla/{records.jsonl, README.md}, and judge.jsonl: the judge's
    answers and which response was shown as A, to join a tool's labels back to the verdicts."""
    tasks = [{"data": {"item": i["item"], "principle_id": i["principle_id"], "stratum": i["stratum"], **_fields(i)}}
             for i in items]
    records = [{"id": i["item"], **_fields(i), "principle_id": i["principle_id"], "stratum": i["stratum"]} for i in items]
    judge_rows = [{"item": i["item"], "run": run, "judge": judge, "pair_id": i["pair_id"], "prompt_id": i["prompt_id"],
                   "principle_id": i["principle_id"], "shown_first": i["shown_first"], "p_a": i["p_a"],
                   "p_a_first": i["p_a_first"], "p_a_second": i["p_a_second"]} for i in items]
    files = {folder / "label-studio" / "tasks.json": json.dumps(tasks, indent=1, ensure_ascii=False) + "\n",
             folder / "label-studio" / "config.xml": LABEL_STUDIO_CONFIG,
             folder / "argilla" / "records.jsonl": "".join(json.dumps(r) + "\n" for r in records),
             folder / "argilla" / "README.md": ARGILLA_README,
             folder / "judge.jsonl": "".join(json.dumps(r) + "\n" for r in judge_rows)}
    problem = replace_problem(folder)  # a new or empty folder, or one we wrote before: never someone's files
    if problem:
        raise UserError(f"--review-files: {folder} {problem}; choose a new or empty folder")
    for path, text in files.items():
        atomic_write_text(path, text)
    mark_folder(folder)
    return list(files)
