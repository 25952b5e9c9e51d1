"""`cai run --reuse OLD` on the echo engine: which rows are taken from the old run and which computed again,
the manifest's account of them, the old run left byte-for-byte as it was, and a killed --reuse run resuming.
Each engine tags its texts, so a row's text tells which run made it. The real-model test is
tests/test_reuse_real.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.constitution import load_constitution
from cai_pipeline.errors import UserError
from cai_pipeline.pipeline import run_pipeline
from cai_pipeline.rng import race_key
from cai_pipeline.store import RunStore
from tests.conftest import REPO, later_wins
from tests.echo_engine import EchoEngine

STAGES = "[sample,revise,pairs,judge,export]"
EDITED = "privacy"  # a principle without a few-shot example


class TaggedEcho(EchoEngine):
    """The echo engine with a tag on every text: a reused row keeps the old run's tag. Counts what it is asked."""

    def __init__(self, tag: str, fail_after: int | None = None):
        super().__init__()
        self.tag, self.calls, self.asked, self.fail_after = tag, 0, 0, fail_after

    def generate(self, convs, params):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # as Ctrl-C or a kill would stop the run here
        self.asked += len(convs)
        return [[type(c)(f"{self.tag} {c.text}", c.finish_reason, c.n_tokens) for c in comps]
                for comps in super().generate(convs, params)]

    def choice_logprobs(self, convs, choices):
        self.asked += len(convs)
        return super().choice_logprobs(convs, choices)


def constitution_file(tmp_path: Path, name: str, edit=None) -> str:
    data = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
    data.pop("templates", None)
    if edit:
        edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def config(tmp_path: Path, name: str, constitution: str, *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", later_wins(
        f"out_dir={tmp_path / name}", f"constitution={constitution}", f"stages={STAGES}", "prompts.limit=6",
        "shard_size=2", "revise.rounds=2", "revise.few_shot=0", *extra))


def run(cfg, tag: str, **kw) -> tuple[dict, TaggedEcho]:
    engine = TaggedEcho(tag, kw.pop("fail_after", None))
    return run_pipeline(cfg, engine=engine, summary=False, report=False, warn=False, **kw), engine


def folder_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def chains(root: Path) -> dict[str, dict]:
    return {f"{r['prompt_id']}/{r['sample_idx']}": r for r in RunStore(root).read_stage("revise")}


def edit_critique(data: dict) -> None:
    for p in data["principles"]:
        if p["id"] == EDITED:
            p["critique"] = "Say plainly where the response exposes anyone's private details, and quote them."


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("old")
    cfg = config(tmp, "old", constitution_file(tmp, "c"))
    run(cfg, "OLD")
    return tmp, cfg


def test_editing_one_critique_recomputes_exactly_the_chains_that_drew_it_from_that_round(old_run, tmp_path):
    tmp, old_cfg = old_run
    before = folder_digest(Path(old_cfg.out_dir))
    cfg = config(tmp_path, "new", constitution_file(tmp_path, "c", edit_critique), f"reuse={old_cfg.out_dir}")
    manifest, engine = run(cfg, "NEW")
    old, new = chains(Path(old_cfg.out_dir)), chains(Path(cfg.out_dir))
    assert old.keys() == new.keys() and len(old) == 12
    touched = {k for k, row in old.items() if EDITED in [r["principle_id"] for r in row["rounds"]]}
    assert touched and touched != set(old)  # the test means something: some chains drew it, some did not
    for k, row in new.items():
        ids = [r["principle_id"] for r in row["rounds"]]
        assert ids == [r["principle_id"] for r in old[k]["rounds"]]  # a text edit moves no draw
        if k not in touched:
            assert row == old[k]
            continue
        first = ids.index(EDITED)
        assert row["rounds"][:first] == old[k]["rounds"][:first]  # the rounds before it are kept
        assert all(r["critique"].startswith("NEW ") for r in row["rounds"][first:])
    reuse = manifest["reuse"]
    assert reuse["sample"] == {"source": old_cfg.out_dir, "reused": 12, "recomputed": 0, "added": 0, "dropped": 0}
    assert reuse["revise"]["reused"] == 12 - len(touched) and reuse["revise"]["recomputed"] == len(touched)
    assert reuse["revise"]["rounds_computed"] == sum(2 - [r["principle_id"] for r in old[k]["rounds"]].index(EDITED)
                                                     for k in touched)
    # Samples were not asked again; only the touched chains' rounds and the verdicts on changed pairs were.
    assert reuse["judge"]["verdicts_computed"] > 0 and reuse["judge"]["reused"] > 0
    assert reuse["pairs"]["recomputed"] == len(touched)  # each touched chain's revision pair changed
    assert folder_digest(Path(old_cfg.out_dir)) == before  # the old run is byte-for-byte as it was
    assert (Path(cfg.out_dir) / "datasets" / "preferences").is_dir()  # a complete run folder


def test_unchanged_inputs_reuse_every_row_and_ask_the_engine_nothing(old_run, tmp_path):
    tmp, old_cfg = old_run
    cfg = config(tmp_path, "same", old_cfg.constitution, f"reuse={old_cfg.out_dir}")
    manifest, engine = run(cfg, "NEW")
    assert engine.asked == 0
    for stage in ("sample", "revise", "pairs", "judge"):
        a, b = RunStore(old_cfg.out_dir), RunStore(cfg.out_dir)
        assert a.read_stage(stage) == b.read_stage(stage)
        assert manifest["reuse"][stage]["recomputed"] == manifest["reuse"][stage]["added"] == 0


def test_changing_the_sampling_temperature_reuses_nothing(old_run, tmp_path):
    tmp, old_cfg = old_run
    cfg = config(tmp_path, "warm", old_cfg.constitution, "sample.temperature=0.5", f"reuse={old_cfg.out_dir}")
    manifest, _ = run(cfg, "NEW")
    assert all(manifest["reuse"][s]["reused"] == 0 for s in ("sample", "revise", "judge"))
    assert all("OLD" not in r["response"] for r in RunStore(cfg.out_dir).read_stage("sample"))


def test_adding_a_principle_changes_only_the_draws_its_key_wins(old_run, tmp_path):
    tmp, old_cfg = old_run
    new_principle = {"id": "kindness", "critique": "Is the response unkind anywhere? Quote it.",
                     "revision": "Rewrite the response to be kind.", "comparison": "Which response is kinder?",
                     "rationale": "A test principle."}
    path = constitution_file(tmp_path, "c", lambda d: d["principles"].append(new_principle))
    cfg = config(tmp_path, "added", path, f"reuse={old_cfg.out_dir}")
    manifest, _ = run(cfg, "NEW")
    old, new = chains(Path(old_cfg.out_dir)), chains(Path(cfg.out_dir))
    principles = load_constitution(old_cfg.constitution).principles
    moved = set()
    for k, row in old.items():
        pid, idx = k.rsplit("/", 1)
        used = []
        for r, rnd in enumerate(row["rounds"]):
            keys = ("revise", pid, int(idx), r)
            wins = all(race_key(cfg.seed, keys, "kindness", 1.0) > race_key(cfg.seed, keys, p.id, p.weight)
                       for p in principles if p.id not in used)
            used.append(rnd["principle_id"])
            if wins:  # the scheme says: this round now draws the new principle, and the chain is redone from it
                moved.add(k)
                assert new[k]["rounds"][r]["principle_id"] == "kindness"
                assert new[k]["rounds"][:r] == row["rounds"][:r]
                break
        if k not in moved:
            assert new[k] == row  # no draw changed: the chain is the old one, byte for byte
    assert manifest["reuse"]["revise"]["recomputed"] == len(moved)


def test_a_killed_reuse_run_resumes_to_the_same_rows(old_run, tmp_path):
    tmp, old_cfg = old_run
    path = constitution_file(tmp_path, "c", edit_critique)
    whole = config(tmp_path, "whole", path, f"reuse={old_cfg.out_dir}")
    run(whole, "NEW")
    cut = config(tmp_path, "cut", path, f"reuse={old_cfg.out_dir}")
    with pytest.raises(KeyboardInterrupt):
        run(cut, "NEW", fail_after=0)  # sample is all reused (no engine call); the first call, in revise, stops it
    assert RunStore(cut.out_dir).shard_indices("sample") == [0, 1, 2]
    assert not RunStore(cut.out_dir).shard_indices("judge")
    manifest, _ = run(cut, "NEW")
    for stage in ("sample", "revise", "pairs", "judge"):
        assert RunStore(cut.out_dir).read_stage(stage) == RunStore(whole.out_dir).read_stage(stage)
    assert manifest["reuse"] == run_pipeline(whole, engine=TaggedEcho("NEW"), summary=False, report=False,
                                             warn=False)["reuse"]


def test_reuse_must_name_another_run_folder(old_run, tmp_path, capsys):
    tmp, old_cfg = old_run
    with pytest.raises(UserError, match="not a cai-pipeline run folder"):
        run(config(tmp_path, "x", old_cfg.constitution, f"reuse={tmp_path}"), "NEW")
    with pytest.raises(UserError, match="own out_dir"):
        run(config(tmp, "old", old_cfg.constitution, f"reuse={old_cfg.out_dir}"), "NEW")
    code = main(["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path / 'y'}", "--reuse", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "reuse:" in err and "Traceback" not in err


def test_compare_leads_with_what_the_edit_changed(old_run, tmp_path, capsys, monkeypatch):
    from cai_pipeline.edit_effects import edit_effects

    monkeypatch.setenv("COLUMNS", "200")
    tmp, old_cfg = old_run
    def edit_all(data):
        edit_critique(data)
        for p in data["principles"]:
            if p["id"] == EDITED:
                p["comparison"] = "Which response keeps private details private?"
    cfg = config(tmp_path, "new", constitution_file(tmp_path, "c", edit_all), f"reuse={old_cfg.out_dir}")
    manifest, _ = run(cfg, "NEW")
    [effect] = edit_effects(RunStore(old_cfg.out_dir), RunStore(cfg.out_dir))
    touched = [k for k, r in chains(Path(old_cfg.out_dir)).items() if EDITED in [x["principle_id"] for x in r["rounds"]]]
    assert effect.principle_id == EDITED and effect.change == "edited: critique, comparison"
    assert effect.chains == effect.chains_changed == len(touched)
    assert effect.examples and effect.examples[0]["after"]["critique"].startswith("NEW ")
    assert effect.examples[0]["before"]["critique"].startswith("OLD ")
    assert main(["compare", old_cfg.out_dir, cfg.out_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith("What the edit changed") and f"{EDITED} (edited: critique, comparison)" in out
    assert f"revise: reused {12 - len(touched)}, recomputed {len(touched)}" in out


def test_the_report_marks_each_chain_reused_recomputed_or_added(old_run, tmp_path):
    from cai_pipeline.report.build import build_document

    tmp, old_cfg = old_run
    cfg = config(tmp_path, "new", constitution_file(tmp_path, "c", edit_critique), f"reuse={old_cfg.out_dir}",
                 "prompts.limit=7")  # one prompt more than the old run
    run(cfg, "NEW")
    old = chains(Path(old_cfg.out_dir))
    _, traces = build_document(cfg.out_dir)
    marks = {f"{t['id']}/{s['i']}": s["reuse"] for t in traces for s in t["samples"]}
    for k, mark in marks.items():
        if k not in old:
            assert mark == ["added"]
            continue
        ids = [r["principle_id"] for r in old[k]["rounds"]]
        expect = ["recomputed", old_cfg.out_dir, ids.index(EDITED)] if EDITED in ids else ["reused", old_cfg.out_dir]
        assert mark == expect, k
    assert sum(m == ["added"] for m in marks.values()) == 2  # the new prompt's two samples
