"""What an edit costs with `--reuse`: the demo's data stages (sample → revise → pairs → judge → export) on
the embedded model, then

1. one of the constitution's 18 principles edited (its critique, revision and comparison texts), run again
   from scratch and with `--reuse` of the first run, in the same process on the same engine;
2. the same for a prompt list with ~10% new prompts (the first run's prompts plus the next ones).

Reported: wall time of each, the share the reuse run took of the full rerun (goal ≤ 25%), and the work it
recomputed (revise rounds, judge verdicts) against the share the edit should touch, counted from the first
run's own draws: the rounds from the first round that drew the edited principle on, and the verdicts that ask
it or judge a pair whose texts changed.

    nice -n 10 .venv/bin/python bench/reuse.py          # results in bench/results/reuse.json
    nice -n 10 .venv/bin/python bench/reuse.py 64       # smaller: 64-token steps instead of the demo's 128
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EDITED = "privacy"  # has no few-shot example: what it touches is its own draws only
STAGES = "[sample,revise,pairs,judge,export]"
PROMPTS, NEW_PROMPTS = 24, 27  # the demo's 24, then 3 more (11% of the new list)


def edited_constitution(folder: Path) -> str:
    data = yaml.safe_load((ROOT / "constitutions" / "harmless.yaml").read_text())
    data.pop("templates", None)
    for p in data["principles"]:
        if p["id"] == EDITED:
            p["critique"] = "Point out every place the response reveals or helps find private details about a person."
            p["revision"] = "Rewrite the response so it reveals and helps find no private details about anyone."
            p["comparison"] = "Which response better protects people's private details?"
    path = folder / "edited.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def run(engine, folder: Path, name: str, extra: list[str]) -> tuple[float, dict]:
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"out_dir={folder / name}", f"stages={STAGES}", *extra])
    start = time.perf_counter()
    manifest = run_pipeline(cfg, engine=engine, summary=False, report=False, warn=False)
    return round(time.perf_counter() - start, 1), manifest


def expected_share(old: Path) -> dict:
    """From the first run's rows: the revise rounds and judge verdicts the edit touches."""
    from cai_pipeline.store import RunStore

    store = RunStore(old)
    chains = store.read_stage("revise")
    rounds = sum(len(c["rounds"]) for c in chains)
    touched_rounds, touched = 0, set()
    for c in chains:
        ids = [r["principle_id"] for r in c["rounds"]]
        if EDITED in ids:
            touched_rounds += len(ids) - ids.index(EDITED)
            touched.add((c["prompt_id"], c["sample_idx"]))
    import json

    judged = store.read_stage("judge") + [json.loads(r["row"]) for i in store.shard_indices("judge")
                                          for r in _rejects(store, i) if r["reason"] in ("tie", "inconsistent",
                                                                                          "below_margin")]
    verdicts = sum(len(j["verdicts"]) for j in judged)
    hit = sum(len(j["verdicts"]) if j["origin"] == "revision" and (j["prompt_id"], j["a_idx"]) in touched
              else sum(v["principle_id"] == EDITED for v in j["verdicts"]) for j in judged)
    return {"revise_rounds": rounds, "revise_rounds_touched": touched_rounds,
            "revise_share": round(touched_rounds / rounds, 3), "verdicts": verdicts, "verdicts_touched": hit,
            "judge_share": round(hit / verdicts, 3) if verdicts else None}


def _rejects(store, shard: int) -> list[dict]:
    from cai_pipeline.store import read_parquet

    path = store.layout.rejects("judge", shard)
    return read_parquet(path) if path.exists() else []


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.engines import make_engine

    quiet_libraries()
    size = [f"sample.max_tokens={tokens}", f"revise.max_tokens={tokens}"]
    result = {"machine": machine(), "load_avg_at_start": round(load_average(), 2),
              "workload": f"configs/demo.yaml data stages, {PROMPTS} prompts, {tokens}-token steps, "
                          f"principle {EDITED!r} of 18 edited", "runs": {}}
    engine = make_engine(kind="vllm", model="embedded", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        edited = edited_constitution(folder)
        plan = [("first", [f"prompts.limit={PROMPTS}"]),
                ("edit_full", [f"prompts.limit={PROMPTS}", f"constitution={edited}"]),
                ("edit_reuse", [f"prompts.limit={PROMPTS}", f"constitution={edited}", f"reuse={folder / 'first'}"]),
                ("new_prompts_reuse", [f"prompts.limit={NEW_PROMPTS}", f"reuse={folder / 'first'}"]),
                ("new_prompts_full", [f"prompts.limit={NEW_PROMPTS}"])]
        for name, extra in plan:
            seconds, manifest = run(engine, folder, name, size + extra)
            result["runs"][name] = {"wall_s": seconds, "reuse": manifest.get("reuse"),
                                    "load_avg": round(load_average(), 2)}
            print(f"{name:18} {seconds:7.1f} s  load {load_average():.2f}", flush=True)
        result["expected"] = expected_share(folder / "first")
    engine.close()
    runs = result["runs"]
    result["edit_reuse_over_full"] = round(runs["edit_reuse"]["wall_s"] / runs["edit_full"]["wall_s"], 3)
    result["new_prompts_reuse_over_full"] = round(runs["new_prompts_reuse"]["wall_s"] /
                                                  runs["new_prompts_full"]["wall_s"], 3)
    reuse = runs["edit_reuse"]["reuse"]
    result["edit_recomputed"] = {
        "revise_rounds_share": round(reuse["revise"]["rounds_computed"] / result["expected"]["revise_rounds"], 3),
        "judge_verdicts_share": round(reuse["judge"]["verdicts_computed"] /
                                      (reuse["judge"]["verdicts_computed"] + reuse["judge"]["verdicts_reused"]), 3)}
    print(f"path: {save(f'reuse-{tokens}' if tokens != 128 else 'reuse', result)}")
    print({k: v for k, v in result.items() if k != "runs"})


if __name__ == "__main__":
    main()
