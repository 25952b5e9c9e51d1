"""Pipeline stages: each is `run(inputs, engine, ctx) -> StageResult`, rows in, rows out."""
