"""`cai judge-check`: can this judge be trusted? Probes change one response along one axis (length, markdown,
a caveat, an appeal to authority, a "revised" label, a refusal, another model's answer) and measure how the
judge's preference for it moves, with intervals over prompts.

    probes.py   the text transforms (pure)          profile.py  judging every variant, the paired shifts
    summary.py  summary.json's typed model          inputs.py   pairs from a run folder or a --data file
    files.py    judge-check/: summary, README, plot
"""
