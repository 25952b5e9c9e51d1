"""Chat-template rendering shared by the local engines and the trainer, so vLLM, transformers and training see
identical token ids.

A conversation whose last message is from the assistant is an assistant *prefix*: the model continues it
(the judge uses "The answer is: (" this way). It is appended after the generation prompt, with no end token.

Message text is only ever text. The template's own control tokens (`<|im_start|>`, `<|im_end|>` for the
embedded model) come from the template; the same strings typed into a prompt, or written by a model into a
response or a critique, are tokenised as the characters they are (`split_special_tokens`), so no text can
open a turn in another role or forge the judge's answer.
"""

from __future__ import annotations

import re

from cai_pipeline.engines.base import Message
from cai_pipeline.errors import UserError

# Control strings of common chat templates, for a server whose tokenizer is not here to ask.
COMMON_CONTROL_STRINGS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                          "<|end_header_id|>", "<|begin_of_text|>", "<start_of_turn>", "<end_of_turn>", "[INST]",
                          "[/INST]", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")
_SENTINEL = re.compile("\ue000(\\d+)\ue001")


def split_prefix(conv: list[Message]) -> tuple[list[Message], str]:
    if conv and conv[-1]["role"] == "assistant":
        return conv[:-1], conv[-1]["content"]
    return conv, ""


def control_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special-token strings, longest first (cached on the tokenizer)."""
    cached = getattr(tokenizer, "_cai_control_strings", None)
    if cached is None:
        found = set(tokenizer.all_special_tokens)
        found |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        cached = tuple(sorted((s for s in found if s), key=len, reverse=True))
        try:
            tokenizer._cai_control_strings = cached
        except AttributeError:  # a tokenizer that takes no attributes: recompute next time
            pass
    return cached


def find_control_string(texts, strings) -> str | None:
    """The first control string in any of `texts`, or None."""
    return next((s for text in texts for s in strings if s in text), None)


def _plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def conversation_ids(tokenizer, conv: list[Message], *, add_generation_prompt: bool) -> list[int]:
    """Token ids of `conv` through the chat template, message text tokenised as plain text.

    A conversation without control strings is rendered and encoded in one piece (the rendered template already
    holds the special tokens it wants: adding them again would double the BOS). One with control strings is
    rendered with placeholders for the texts, and each text is encoded as plain text in its place."""
    render = tokenizer.apply_chat_template
    if find_control_string((m["content"] for m in conv), control_strings(tokenizer)) is None:
        text = render(list(conv), add_generation_prompt=add_generation_prompt, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(conv)]
    parts = _SENTINEL.split(render(marked, add_generation_prompt=add_generation_prompt, tokenize=False))
    if sorted(int(i) for i in parts[1::2]) != list(range(len(conv))):  # the template did not keep a text as is
        raise UserError("this model's chat template changes message text, so text with control tokens cannot be "
                        "tokenised safely; remove the control strings from the input")
    ids: list[int] = []
    for k, part in enumerate(parts):
        ids += _plain(tokenizer, conv[int(part)]["content"]) if k % 2 else tokenizer.encode(part, add_special_tokens=False)
    return ids


def prompt_ids(tokenizer, conv: list[Message]) -> list[int]:
    """The ids a model continues: the conversation with the generation prompt, then any assistant prefix."""
    head, prefix = split_prefix(conv)
    if find_control_string([prefix, *(m["content"] for m in head)], control_strings(tokenizer)) is None:
        text = tokenizer.apply_chat_template(list(head), add_generation_prompt=True, tokenize=False) + prefix
        return tokenizer.encode(text, add_special_tokens=False)
    return conversation_ids(tokenizer, head, add_generation_prompt=True) + _plain(tokenizer, prefix)


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
