"""The fuzz suite of tests/test_fuzz_inputs.py, longer: each of the four readers (prompts, constitutions, configs
with overrides, training data) with many more generated inputs, random rather than the CI run's fixed draw.

    .venv/bin/python bench/fuzz.py [--examples 2000] [--seed 0]

Every input must end in valid rows, recorded rejects or one UserError line; a failure prints hypothesis' smallest
failing input. The result (examples, seconds, failures) goes to bench/results/fuzz.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from bench.common import machine, save  # noqa: E402
from tests import test_fuzz_inputs as fuzz  # noqa: E402

READERS = {
    "prompts": (fuzz.prompt_files, fuzz.check_prompts),
    "constitutions": (fuzz.st.tuples(fuzz.constitution_docs, fuzz.st.sampled_from(fuzz.YAML_TRICKS),
                                     fuzz.st.booleans()), fuzz.check_constitution),
    "configs": (fuzz.st.tuples(fuzz.config_docs, fuzz.st.sampled_from(fuzz.YAML_TRICKS), fuzz.overrides),
                fuzz.check_config),
    "training data": (fuzz.train_files, fuzz.check_training_data),
}


def run_reader(name: str, examples: int, rng_seed: int) -> dict:
    strategy, check = READERS[name]
    count = {"n": 0}

    def counted(spec):
        count["n"] += 1
        check(spec)

    test = seed(rng_seed)(settings(max_examples=examples, deadline=5000, database=None,
                                   suppress_health_check=list(HealthCheck))(given(strategy)(counted)))
    start = time.perf_counter()
    failure = None
    try:
        test()
    except Exception as e:  # hypothesis re-raises the shrunk failing example's error
        failure = "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]
    return {"reader": name, "examples": count["n"], "seconds": round(time.perf_counter() - start, 1),
            "failure": failure}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="generated inputs per reader")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = []
    for name in READERS:
        r = run_reader(name, args.examples, args.seed)
        results.append(r)
        status = "ok" if r["failure"] is None else f"FAILED: {r['failure']}"
        print(f"{name}: {r['examples']} inputs in {r['seconds']} s, {status}", flush=True)
    save("fuzz", {"machine": machine(), "command": " ".join(["bench/fuzz.py", *sys.argv[1:]]),
                          "examples_per_reader": args.examples, "seed": args.seed, "readers": results,
                          "failures": sum(r["failure"] is not None for r in results)})
    sys.exit(1 if any(r["failure"] for r in results) else 0)


if __name__ == "__main__":
    main()
