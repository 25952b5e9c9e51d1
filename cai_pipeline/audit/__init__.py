"""The audit: does a model follow the constitution better than another? One package, one concern each:

    stage.py    the run-scope stage: which models, generation, pairs, the judge, refusals → the files
    prompts.py  which prompts are asked (the run's held-out prompts, the bundled set, a file, a run folder)
    stats.py    pure statistics: win rates, length control, the cluster bootstrap over prompts
    summary.py  summary.json (**contract**): its typed model, and how the numbers become one
    files.py    what it leaves in audit/: the tables, plots, README, summary.json; the terminal table

Readers of an audit (`cai audit`, `cai compare`, `cai iterate`, the report) read `summary.AuditSummary`.
"""
