"""judge-check/summary.json (**contract**): its typed model, read and written only through it.

    {"judge": name, "probes": {name: {"shift", "ci_low", "ci_high", "n", "flagged"}}, ...}

`shift` is the mean change in the judge's p for the changed response, in [−1, 1]; the interval is a cluster
bootstrap over prompts; `flagged` says the interval excludes 0 on a biased side and |shift| ≥ the threshold.
Beside the contract's two keys: the same rows per principle, the probes that were not run and why, the
settings, and the cost (seconds, judge calls).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from cai_pipeline.errors import UserError

# |shift| below this is not flagged, however narrow its interval: five points of preference is where a bias
# starts to matter for labels that are later thresholded at judge.min_margin (0.05 by default).
FLAG_THRESHOLD = 0.05


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeScore(_Strict):
    shift: float | None
    ci_low: float | None
    ci_high: float | None
    n: int  # pairs the shift is the mean over
    flagged: bool


class CheckSettings(_Strict):
    source: str  # the run folder, or the --data file
    pairs: int
    prompts: int
    principles_per_pair: int
    bootstrap: int
    confidence: float
    threshold: float
    seed: int
    layout: str
    reasoning: bool


class Cost(_Strict):
    seconds: float
    judge_calls: int  # conversations scored: pairs x principles x 2 orders, for every variant
    failed: int  # judge calls that came back without a verdict (too long, server errors)


class JudgeCheckSummary(_Strict):
    judge: str
    probes: dict[str, ProbeScore]
    principles: dict[str, dict[str, ProbeScore]] = {}  # principle id → probe → its row
    skipped: dict[str, str] = {}  # probe → why it was not run
    settings: CheckSettings
    cost: Cost

    def flagged(self) -> list[str]:
        return [name for name, row in self.probes.items() if row.flagged]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"


def read_check(path: Path) -> JudgeCheckSummary | None:
    """The judge-check summary at `path`; None when there is none. A file that is not one is one line."""
    if not path.exists():
        return None
    try:
        return JudgeCheckSummary.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UserError(f"{path}: not a judge-check summary ({where}: {first['msg']}); run `cai judge-check` "
                        "again to write it") from None
