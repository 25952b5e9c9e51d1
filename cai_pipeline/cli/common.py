"""What every command shares: the parser that takes options anywhere, the common arguments, and loading a
run config the way every command does (a config file plus dotted overrides, stage names checked)."""

from __future__ import annotations

import argparse

from cai_pipeline import stages
from cai_pipeline.errors import UserError


class IntermixedParser(argparse.ArgumentParser):
    """Options anywhere among the positionals (`cai run CONFIG --stages sample prompts.limit=2`): a command's
    own parser uses argparse's intermixed parsing; a parser of subcommands dispatches as usual."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_overrides(p: argparse.ArgumentParser, example: str = "prompts.limit=4") -> None:
    p.add_argument("overrides", nargs="*", default=[], help=f"dotted key=value overrides, e.g. {example}")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="keep vLLM's and transformers' own log output")


def add_no_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write out_dir/report.html at the end (`cai report` writes it any time)")


def add_config(p: argparse.ArgumentParser, example: str = "configs/demo.yaml") -> None:
    p.add_argument("config", help=f"a run config YAML, e.g. {example}")


def load_run_config(path, overrides: list[str]):
    """The run config of a command: the file, the overrides, and its `stages` checked against the stage list
    (a config names stages; only the stage list knows which exist)."""
    from cai_pipeline.config import load_config

    cfg = load_config(path, overrides)
    for name in cfg.stages:
        if stages.find(name) is None:
            raise UserError(f"{path}: stages: {stages.unknown_stage_message(name)}")
    return cfg
