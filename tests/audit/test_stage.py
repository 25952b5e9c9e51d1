"""`cai audit`: every output and the summary.json contract, length bias flagged and controlled, the bad-input
catalogue (each refused before anything runs), and `cai compare` showing two audits — with a stand-in engine,
in seconds. Then the real model: a self-audit whose intervals cover 0.5, and the demo's trained checkpoint
audited against its base model end to end (test_audit_real.py)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import cai_pipeline.engines
from cai_pipeline.cli import main
from cai_pipeline.engines.base import Completion, EngineStats
from cai_pipeline.rng import derive_seed
from tests.conftest import REPO, later_wins, one_line

CONFIG = str(REPO / "configs" / "demo.yaml")
MODELS = ["audit.model=embedded", "audit.baseline=embedded", "audit.judge.model=embedded"]
PRINCIPLE_KEYS = {"win_rate", "ci_low", "ci_high", "lc_win_rate", "consistency", "n"}
OVERALL_KEYS = PRINCIPLE_KEYS | {"refusal_rate_model", "refusal_rate_baseline", "mean_length_change"}


def _hash(*parts) -> bytes:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).digest()


class StandIn:
    """Every model of an audit without a model: responses of 3-30 words drawn from the call's seed (the side
    whose seed is `longer_seed` writes 0-30 words more), and a judge whose log-probs come from a hash of the
    conversation — or, with `prefer_longer`, from how much longer (A) is than (B)."""

    name, model, max_model_len = "stand-in", "stand-in", 4096

    def __init__(self, longer_seed: int | None = None, prefer_longer: bool = False):
        self.stats, self.longer_seed, self.prefer_longer = EngineStats(), longer_seed, prefer_longer
        self.calls: list[str] = []

    def generate(self, convs, params):
        self.calls.append("generate")
        out = []
        for conv in convs:
            comps = []
            for k in range(params.n):
                h = _hash(params.seed, conv, k)
                n = 3 + h[0] % 28 + (h[1] % 31 if params.seed == self.longer_seed else 0)
                comps.append(Completion(" ".join(f"w{h[2]}" for _ in range(n)), "stop", n))
            out.append(comps)
        return out

    def choice_logprobs(self, convs, choices):
        self.calls.append("choice_logprobs")
        out = []
        for conv in convs:
            text = conv[0]["content"]
            m = re.search(r"\(A\) (.*?)\n\n\(B\) (.*?)\n\n", text)
            if self.prefer_longer and m and choices == ["A", "B"]:
                out.append({"A": 0.1 * (len(m.group(1).split()) - len(m.group(2).split())), "B": 0.0})
            else:
                h = _hash(conv)
                out.append({c: -1.0 - h[i] / 64 for i, c in enumerate(choices)})
        return out

    def count_tokens(self, conv):
        return sum(len(m["content"].split()) for m in conv)

    def close(self):
        pass


@pytest.fixture
def stand_in(monkeypatch, model_path):
    """Every engine the audit opens is this stand-in (the models named must still exist: they are checked)."""
    engine = StandIn()
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: engine)
    return engine


def audit(out: Path, *args: str) -> int:
    return main(["audit", CONFIG, *later_wins(f"out_dir={out}", "audit.limit=12", "audit.n=2", *MODELS, *args)])



def check_outputs(out: Path, prompts: int, n: int, principles: int) -> dict:
    """Every file of audit/, read the way a user reads it, consistent with summary.json."""
    folder = out / "audit"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary) >= {"principles", "overall"} and len(summary["principles"]) == principles
    for pid, row in summary["principles"].items():
        assert PRINCIPLE_KEYS <= set(row), pid
        assert 0 <= row["ci_low"] <= row["win_rate"] <= row["ci_high"] <= 1 and 0 <= row["lc_win_rate"] <= 1
        assert 0 <= row["consistency"] <= 1 and row["n"] == prompts * n
    assert OVERALL_KEYS <= set(summary["overall"])
    responses = pd.read_parquet(folder / "responses.parquet")
    assert responses.groupby("side").size().to_dict() == {"model": prompts * n, "baseline": prompts * n}
    assert responses["prompt_id"].nunique() == prompts
    verdicts = pd.read_parquet(folder / "verdicts.parquet")
    assert len(verdicts) == prompts * n * principles * 2  # every pair x principle x order
    orders = verdicts.groupby(["pair_id", "principle_id"])["order"].apply(sorted)
    assert all(o == ["baseline_first", "model_first"] for o in orders)
    # The summary's win rate is the verdicts' mean over orders: the files agree with each other.
    per_principle = verdicts.groupby("principle_id")["p_model"].mean()
    for pid, row in summary["principles"].items():
        assert row["win_rate"] == pytest.approx(per_principle[pid], abs=1e-4)
    readme = (folder / "README.md").read_text()
    assert all(f"| {pid} |" in readme for pid in summary["principles"])
    for name in ("win_rates.png", "length.png"):
        data = (folder / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000 and f"plots/{name}" in readme
    # the only rejects: bundled audit prompts that are also among the run's (training) prompts, dropped
    rejects = pd.read_parquet(out / "rejects" / "audit")
    assert set(rejects["reason"]) <= {"contaminated"} and len(rejects) == summary["decontamination"]["dropped"]
    return summary


def test_an_audit_writes_every_output_and_is_not_repeated(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["audit", "--restart", CONFIG, "audit.n=2", f"out_dir={out}", "audit.limit=12", *MODELS]) == 0
    summary = check_outputs(out, prompts=12, n=2, principles=18)
    assert summary["settings"]["layout"] == "question_first" and summary["counts"]["judged"] == 24
    assert set(summary["axes"]) == {"harmlessness", "helpfulness"} and summary["axes_note"] is None
    shown = capsys.readouterr().out
    assert "overall" in shown and "no_needless_refusal" in shown and "refusal on benign prompts" in shown
    # the judge is the audited model: said once in the terminal, and in the summary and README
    assert shown.count("warning: the judge (embedded) is the policy") == 1
    assert summary["warnings"][0].startswith("the judge (embedded) is the policy")
    assert "Warning: the judge (embedded) is the policy" in (out / "audit" / "README.md").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"] == {"audit": "ran"} and manifest["stages"]["audit"]["summary"]["pairs"] == 24
    before = (out / "audit" / "summary.json").read_bytes()
    stand_in.calls.clear()
    assert audit(out) == 0  # the same settings: nothing recomputed
    assert stand_in.calls == [] and "already audited" in capsys.readouterr().out
    assert (out / "audit" / "summary.json").read_bytes() == before
    assert audit(out, "audit.n=1") == 0  # a changed setting redoes it
    check_outputs(out, prompts=12, n=1, principles=18)


def test_the_model_and_baseline_sample_with_their_own_seeds(stand_in, tmp_path):
    assert audit(tmp_path / "run", "audit.n=1") == 0
    responses = pd.read_parquet(tmp_path / "run" / "audit" / "responses.parquet")
    sides = responses.pivot(index="prompt_id", columns="side", values="response")
    assert (sides["model"] != sides["baseline"]).mean() > 0.5  # the same model, two independent samples


def test_a_judge_that_pays_for_length_is_flagged_and_controlled(monkeypatch, model_path, tmp_path):
    engine = StandIn(longer_seed=derive_seed(0, "audit", "model"), prefer_longer=True)
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: engine)
    assert audit(tmp_path / "run", "audit.limit=40", "audit.n=1", "audit.principles=[violence,crime]") == 0
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    o = summary["overall"]
    assert o["mean_length_change"] > 5 and o["win_rate"] > 0.7  # longer, and "better" for it
    assert abs(o["lc_win_rate"] - 0.5) < (o["win_rate"] - 0.5) / 2  # most of it is length
    assert any(w.startswith("overall: raw win rate") for w in summary["warnings"])
    assert "Warning: overall: raw win rate" in (tmp_path / "run" / "audit" / "README.md").read_text()


def test_a_model_that_does_not_exist_is_refused_before_anything_runs(stand_in, tmp_path, capsys):
    for key in ("audit.model", "audit.baseline", "audit.judge.model"):
        code = audit(tmp_path / "run", f"{key}={tmp_path / 'no-such-model'}")
        one_line(capsys, code, key, "does not exist")
    assert stand_in.calls == [] and not (tmp_path / "run").exists()


def test_an_empty_prompt_set_is_refused(stand_in, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line(capsys, audit(tmp_path / "run", f"audit.prompts={empty}"), str(empty), "no prompts")
    one_line(capsys, audit(tmp_path / "run", f"audit.prompts={tmp_path / 'missing.jsonl'}"), "audit.prompts",
             "does not exist")
    assert stand_in.calls == [] and not (tmp_path / "run").exists()


def test_a_run_without_a_checkpoint_is_refused(stand_in, tmp_path, capsys):
    code = main(["audit", CONFIG, f"out_dir={tmp_path / 'run'}"])
    one_line(capsys, code, "audit.model", "no checkpoint", "cai train")
    assert stand_in.calls == [] and not (tmp_path / "run").exists()


def test_an_unknown_principle_is_refused_with_the_nearest(stand_in, tmp_path, capsys):
    one_line(capsys, audit(tmp_path / "run", "audit.principles=[violense]"), "audit.principles", "'violence'")


def test_a_constitution_without_tags_has_no_axis_split_and_says_so(stand_in, tmp_path):
    text = (REPO / "constitutions" / "harmless.yaml").read_text()
    untagged = tmp_path / "untagged.yaml"
    untagged.write_text(re.sub(r"\n    tags: \[.*?\]", "", text))
    assert audit(tmp_path / "run", f"constitution={untagged}") == 0
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    assert summary["axes"] == {} and "no audited principle has tags" in summary["axes_note"]
    assert all(row["axis"] is None for row in summary["principles"].values())
    assert "no audited principle has tags" in (tmp_path / "run" / "audit" / "README.md").read_text()


def test_prompt_files_carry_their_tags_and_refusal_needs_benign_ones(stand_in, tmp_path):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Question {i}?", "tag": "harmful"}) for i in range(6)))
    assert audit(tmp_path / "run", f"audit.prompts={prompts}") == 0
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    assert summary["counts"]["prompts_by_tag"] == {"harmful": 6}
    assert summary["overall"]["refusal_rate_model"] is None and summary["overall"]["refusal_rate_harmful_model"] is not None
    assert any("no refusal rate" in w for w in summary["warnings"])


def test_compare_shows_both_audits_side_by_side(stand_in, tmp_path, capsys):
    assert audit(tmp_path / "a") == 0
    assert audit(tmp_path / "b", "seed=1") == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    shown = capsys.readouterr().out
    a = json.loads((tmp_path / "a" / "audit" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "audit" / "summary.json").read_text())
    assert "Audit" in shown and "no_lecturing" in shown
    for s in (a, b):
        assert f"{100 * s['overall']['win_rate']:.1f}" in shown


def test_editing_the_refusal_template_leaves_the_shards_alone():
    """Only the audit renders refusal.j2: an edit redoes the audit (its identity has every template), never
    makes a run refuse to resume its sample/revise/judge shards."""
    from cai_pipeline.config import load_config
    from cai_pipeline.fingerprint import shard_fingerprints
    from cai_pipeline.stages import STAGES

    cfg = load_config(CONFIG, ["out_dir=x"])
    hashes = {"prompts": "p", "constitution": "c", "templates": {"judge.j2": "1", "refusal.j2": "a"}}
    edited = {**hashes, "templates": {"judge.j2": "1", "refusal.j2": "b"}}
    judge_edited = {**hashes, "templates": {"judge.j2": "2", "refusal.j2": "a"}}
    assert shard_fingerprints(cfg, hashes, STAGES) == shard_fingerprints(cfg, edited, STAGES)
    assert shard_fingerprints(cfg, hashes, STAGES)["judge"] != shard_fingerprints(cfg, judge_edited, STAGES)["judge"]


@pytest.mark.parametrize("judge, expected", [("org/base", ["org/trained", "org/base"]),
                                             ("org/trained", ["org/base", "org/trained"])])
def test_one_model_at_a_time_and_the_judge_reuses_an_open_engine(monkeypatch, tmp_path, judge, expected):
    live, built = [], []

    class Tracked(StandIn):
        def close(self):
            live.remove(self)

    def build(*args, model=None, **kwargs):
        assert not live, f"{model} would be loaded while {live[0].model} is still resident"
        engine = Tracked()
        engine.model = model
        live.append(engine)
        built.append(model)
        return engine

    monkeypatch.setattr(cai_pipeline.engines, "make_engine", build)
    # Hub ids pass the model check (where a hub is reachable the engine fetches them); nothing is fetched here.
    assert main(["audit", CONFIG, f"out_dir={tmp_path / 'run'}", "audit.limit=4", "audit.model=org/trained",
                 "audit.baseline=org/base", f"audit.judge.model={judge}"]) == 0
    assert built == expected and live == []  # the judge's model went last and was not loaded twice


def test_default_prompts_put_the_run_s_held_out_ones_first(tmp_path):
    from cai_pipeline.audit.prompts import BUNDLED_PROMPTS, audit_prompts
    from cai_pipeline.config import load_config
    from cai_pipeline.inputs import prompt_id
    from cai_pipeline.records import PreferenceRecord
    from cai_pipeline.store import RunLayout, write_parquet

    layout = RunLayout(tmp_path / "run")
    bundled = json.loads(BUNDLED_PROMPTS.read_text().splitlines()[5])["prompt"]
    messages = [[{"role": "user", "content": text}] for text in ("Mine?", bundled)]
    ids = [prompt_id(m) for m in messages]  # as the run gave them: a hash of the messages
    rows = [{"pair_id": f"p{i}", "prompt_id": ids[i], "prompt": m, "chosen": [{"role": "assistant", "content": "c"}],
             "rejected": [{"role": "assistant", "content": "r"}], "p_chosen": 0.7, "revision_principle_ids": [], "judge_principle_ids": [],
             "origin": "sampled", "label_source": "judge", "chosen_truncated": False, "rejected_truncated": False}
            for i, m in enumerate(messages)]
    write_parquet(layout.split_file("preferences", "test"), rows, PreferenceRecord)
    cfg = load_config(CONFIG, [f"out_dir={layout.root}", "audit.limit=null"])
    prompts, rejects = audit_prompts(cfg, layout)
    assert [p["prompt_id"] for p in prompts[:2]] == ids and rejects == []
    assert [p["tag"] for p in prompts[:2]] == ["held_out", "held_out"]  # the bundled duplicate stays held out
    assert len(prompts) == 2 + 99 - 1 and len({p["prompt_id"] for p in prompts}) == len(prompts)
    limited, _ = audit_prompts(load_config(CONFIG, [f"out_dir={layout.root}", "audit.limit=24"]), layout)
    tags = [p["tag"] for p in limited]
    assert tags[:2] == ["held_out", "held_out"] and len(limited) == 24
    # the other 22 keep the bundled mix: 48 harmful and 50 benign once the duplicate is held out → 11 and 11
    assert tags.count("harmful") == 11 and tags.count("benign") == 11
    again, _ = audit_prompts(load_config(CONFIG, [f"out_dir={layout.root}", "audit.limit=24", "seed=3"]), layout)
    assert again == limited  # the same ones whatever the seed


def test_prompts_from_a_run_folder_are_the_prompts_its_audit_used(tmp_path):
    from cai_pipeline.audit.prompts import audit_prompts
    from cai_pipeline.config import load_config
    from cai_pipeline.errors import UserError
    from cai_pipeline.store import RunLayout

    done = RunLayout(tmp_path / "round")
    done.audit_dir.mkdir(parents=True)
    asked = [("h1", "held_out", "Mine?"), ("b7", "benign", "Kill a stuck process?"), ("x3", "harmful", "Hurt him?")]
    rows = [{"prompt_id": pid, "tag": tag, "side": side, "prompt": [{"role": "user", "content": text}]}
            for side in ("model", "baseline") for pid, tag, text in asked]
    pd.DataFrame(rows).to_parquet(done.audit_responses)
    cfg = load_config(CONFIG, [f"out_dir={tmp_path / 'other'}", f"audit.prompts={done.root}", "audit.limit=null"])
    prompts, rejects = audit_prompts(cfg, RunLayout(tmp_path / "other"))
    assert [(p["prompt_id"], p["tag"], p["prompt"][0]["content"]) for p in prompts] == asked and rejects == []
    (tmp_path / "empty").mkdir()
    cfg = load_config(CONFIG, [f"out_dir={tmp_path / 'other'}", f"audit.prompts={tmp_path / 'empty'}"])
    with pytest.raises(UserError, match=r"audit.prompts: .*empty is a folder without an audit \(audit/responses"):
        audit_prompts(cfg, RunLayout(tmp_path / "other"))
