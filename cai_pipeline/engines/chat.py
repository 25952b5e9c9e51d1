"""Chat-template rendering shared by the local engines, so vLLM and transformers see identical token ids.

A conversation whose last message is from the assistant is an assistant *prefix*: the model continues it
(the judge uses "The answer is: (" this way). It is appended after the generation prompt, with no end token.
"""

from __future__ import annotations

from cai_pipeline.engines.base import Message
from cai_pipeline.errors import UserError


def split_prefix(conv: list[Message]) -> tuple[list[Message], str]:
    if conv and conv[-1]["role"] == "assistant":
        return conv[:-1], conv[-1]["content"]
    return conv, ""


def render_prompt(tokenizer, conv: list[Message]) -> str:
    head, prefix = split_prefix(conv)
    return tokenizer.apply_chat_template(list(head), add_generation_prompt=True, tokenize=False) + prefix


def prompt_ids(tokenizer, conv: list[Message]) -> list[int]:
    # The rendered template already holds the special tokens it wants; adding them again would double the BOS.
    return tokenizer.encode(render_prompt(tokenizer, conv), add_special_tokens=False)


def end_token_ids(tokenizer, generation_config=None) -> set[int]:
    """The tokens that end an assistant turn: the tokenizer's EOS and any the generation config adds."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(generation_config, "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return {i for i in ids if i is not None}


def choice_token_ids(tokenizer, choices: list[str]) -> list[int]:
    ids = []
    for choice in choices:
        toks = tokenizer.encode(choice, add_special_tokens=False)
        if len(toks) != 1:
            raise UserError(f"choice {choice!r} is {len(toks)} tokens for this tokenizer; choices must be single tokens")
        ids.append(toks[0])
    return ids


def trim_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the first stop string (the stop string itself is not kept)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
