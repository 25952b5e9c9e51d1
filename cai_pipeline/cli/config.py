"""`cai config show CONFIG [key=value ...]` and `cai config reference`."""

from __future__ import annotations

import argparse

from cai_pipeline.cli.common import add_overrides, load_run_config


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from cai_pipeline.config import reference_markdown

    if args.config_cmd == "reference":
        print(reference_markdown())
    else:
        print(yaml.safe_dump(load_run_config(args.config, args.overrides).model_dump(), sort_keys=False), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show a resolved run config, or the reference of every key")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    show = csub.add_parser("show", help="the config after defaults and overrides, as YAML")
    show.add_argument("config")
    add_overrides(show)
    show.set_defaults(func=_cmd_config)
    csub.add_parser("reference", help="every key with its default, as a Markdown table").set_defaults(func=_cmd_config)
