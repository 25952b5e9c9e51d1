"""Checkable principles: rules a program decides, as pure functions of the conversation and the response.

A principle's `check:` (docs/constitutions.md) combines built-in checkers, all of which must pass:

    max_words / min_words   whitespace-separated words of the response
    max_chars               characters of the response
    forbid                  regexes that must not match (Python `re`, searched anywhere in the response)
    require                 regexes that must match
    pii                     true: no e-mail address, phone number or card number in the response
    python                  "module:function" — the user's own, from a file next to the constitution (below)

`run_check` returns a `CheckResult(passed, reason)`; the reason names every checker that failed, so a critique
prompt, a trace and a test can say why. Regexes are compiled once and cached. The user's function is called as
`function(conversation, response)` (conversation: the chat messages before the response) and returns a bool, or
`(bool, reason)`; it is loaded only from the file the constitution names (module path relative to the
constitution's folder, never from data), and loading it is said aloud on stderr — a constitution that names
code runs it, as `engine.trust_remote_code` does.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# PII patterns: deliberately simple and high-recall; a false positive fails a response, which is the safe side.
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
# A phone number: 7–15 digits with the usual separators, optionally +country code; not a plain year or count.
PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w.])")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")


class CheckSpec(BaseModel):
    """A principle's `check:` mapping. At least one checker; all must pass."""

    model_config = ConfigDict(extra="forbid")

    max_words: int | None = Field(None, gt=0, description="at most this many whitespace-separated words")
    min_words: int | None = Field(None, ge=0, description="at least this many words")
    max_chars: int | None = Field(None, gt=0, description="at most this many characters")
    forbid: list[str] = Field([], description="regexes that must not match the response")
    require: list[str] = Field([], description="regexes that must match the response")
    pii: bool = Field(False, description="true: no e-mail address, phone number or card number")
    python: str | None = Field(None, description="'module:function' next to the constitution: your own check")

    @model_validator(mode="after")
    def _something(self) -> CheckSpec:
        if not self.model_fields_set:
            raise ValueError("an empty check; give at least one of " + ", ".join(CheckSpec.model_fields))
        return self


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reason: str  # "passes" or every failure, "; "-separated

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason}


# ---------------------------------------------------------------------------------------------------------
# The built-in checkers: each returns None (pass) or the reason it failed


def word_count(text: str) -> int:
    return len(text.split())


@functools.lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _pii_found(text: str) -> str | None:
    for name, pattern in (("an e-mail address", EMAIL), ("a card number", CARD), ("a phone number", PHONE)):
        m = pattern.search(text)
        if m and (name != "a phone number" or sum(c.isdigit() for c in m.group()) >= 7):
            return f"contains {name} ({m.group()!r})"
    return None


def builtin_failures(spec: CheckSpec, response: str) -> list[str]:
    """Why `response` fails the spec's built-in checkers ([] when it passes them all)."""
    out = []
    words = word_count(response)
    if spec.max_words is not None and words > spec.max_words:
        out.append(f"{words} words, more than max_words {spec.max_words}")
    if spec.min_words is not None and words < spec.min_words:
        out.append(f"{words} words, fewer than min_words {spec.min_words}")
    if spec.max_chars is not None and len(response) > spec.max_chars:
        out.append(f"{len(response)} characters, more than max_chars {spec.max_chars}")
    for pattern in spec.forbid:
        m = compiled(pattern).search(response)
        if m:
            out.append(f"matches forbidden /{pattern}/ ({m.group()[:40]!r})")
    out += [f"does not match required /{p}/" for p in spec.require if not compiled(p).search(response)]
    if spec.pii:
        found = _pii_found(response)
        if found:
            out.append(found)
    return out


def run_check(spec: CheckSpec, conversation: Sequence[dict], response: str, base_dir: Path | None = None) -> CheckResult:
    """The check's verdict on `response` (the reply to `conversation`); the user's function, if any, last."""
    failures = builtin_failures(spec, response)
    if spec.python:
        passed, reason = call_user_check(load_function(spec.python, base_dir), conversation, response)
        if not passed:
            failures.append(f"{spec.python}: {reason or 'fails'}")
    return CheckResult(not failures, "; ".join(failures) or "passes")


def call_user_check(fn: Callable, conversation: Sequence[dict], response: str) -> tuple[bool, str]:
    result = fn([dict(m) for m in conversation], response)
    if isinstance(result, tuple) and len(result) == 2:
        return bool(result[0]), str(result[1])
    if isinstance(result, bool):
        return result, ""
    raise TypeError(f"a check function returns a bool or (bool, reason), not {type(result).__name__}")


# ---------------------------------------------------------------------------------------------------------
# Problems a constitution's checks can have, found before anything runs (for `cai constitution validate`)


def spec_problems(spec: Any, base_dir: Path | None) -> list[tuple[tuple, str]]:
    """(location inside the check, message) for regexes that do not compile and functions that do not load."""
    if not isinstance(spec, dict):
        return []
    problems = []
    for key in ("forbid", "require"):
        patterns = spec.get(key)
        for i, pattern in enumerate(patterns if isinstance(patterns, list) else []):
            if isinstance(pattern, str):
                try:
                    compiled(pattern)
                except re.error as e:
                    problems.append(((key, i), f"regex /{pattern}/ does not compile: {e}; fix it (Python re syntax)"))
    ref = spec.get("python")
    if isinstance(ref, str):
        try:
            load_function(ref, base_dir)
        except (ImportError, AttributeError, ValueError, SyntaxError, OSError) as e:
            problems.append((("python",), str(e).removeprefix("python: ")))
    return problems


# ---------------------------------------------------------------------------------------------------------
# The user's own function: loaded from a file the constitution names, once, and said aloud


def module_file(ref: str, base_dir: Path | None) -> tuple[Path, str]:
    """("module:function" or "path/file.py:function", base folder) → (the .py file, the function's name)."""
    module, sep, name = ref.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise ValueError(f"python: {ref!r} is not 'module:function' (e.g. 'mychecks:no_dosage', a file mychecks.py "
                         "next to the constitution)")
    relative = Path(module) if module.endswith(".py") else Path(*module.split(".")).with_suffix(".py")
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"python: {ref!r}: name a file inside the constitution's folder, not {relative}")
    return (base_dir or Path.cwd()) / relative, name


@functools.lru_cache(maxsize=64)
def _load(path: Path, name: str) -> Callable:
    if not path.is_file():
        raise ImportError(f"python: no file {path}; put the module next to the constitution")
    print(f"warning: constitution check: running your code {name}() from {path} (a constitution that names "
          "code runs it)", file=sys.stderr)
    spec = importlib.util.spec_from_file_location(f"cai_user_check_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SyntaxError(f"python: {path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # the user's module failed at import: say where, in one line
        raise ImportError(f"python: {path}: importing it failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"python: {path} has no function {name!r}; define def {name}(conversation, response)")
    return fn


def load_function(ref: str, base_dir: Path | None) -> Callable:
    path, name = module_file(ref, base_dir)
    return _load(path.resolve(), name)
