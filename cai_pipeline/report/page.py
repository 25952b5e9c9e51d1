"""The report page: one self-contained HTML file (inline CSS and JS, the data as JSON, nothing fetched).

All model and user text is untrusted. It travels as JSON inside `<script type="application/json">` with `<`,
`>` and `&` written as \\u escapes (so no string can close the element or open a comment) and U+2028/U+2029
escaped too (JavaScript line terminators in older engines); the page reads it with JSON.parse and shows every
string through text nodes. A Content-Security-Policy allows only the page's own script and style (by hash),
so even a rendering bug could not run a script from the data or make the page load anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from pathlib import Path

ASSETS = Path(__file__).parent
BLOCK = 256  # traces per embedded block: opening a trace parses its block only
_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_SLOT = re.compile(r"<!--CAI:(\w+)-->")
# In template.html's head: what tells a report of ours from any other file (`cai report -o` overwrites only these).
GENERATOR = '<meta name="generator" content="cai-pipeline">'


def _finite(obj):
    """NaN and ±inf as null: JSON has no spelling for them (a diverged loss must not break the page)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def script_json(obj) -> str:
    """JSON that is safe as the text of a <script type="application/json"> element."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.translate(_ESCAPES)


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _inline(name: str) -> str:
    """Our own CSS or JS, to go inside its element: it must not be able to close it."""
    text = _asset(name)
    if "</script" in text.lower() or "</style" in text.lower() or "<!--" in text:
        raise ValueError(f"{name} contains a sequence that would end its element early")
    return text


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render(doc: dict, traces: list[dict]) -> str:
    """The whole page as one string."""
    css, js = _inline("report.css"), _inline("report.js")
    doc = {**doc, "block": BLOCK}
    blocks = "\n".join(
        f'<script type="application/json" class="trace-block">{script_json(traces[i : i + BLOCK])}</script>'
        for i in range(0, len(traces), BLOCK))
    csp = (f"default-src 'none'; script-src {_hash(js)}; style-src {_hash(css)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    slots = {"csp": csp, "title": html.escape(f"{doc['title']} · cai-pipeline report"), "css": css,
             "data": script_json(doc), "js": js, "blocks": blocks}
    return _SLOT.sub(lambda m: slots[m.group(1)], _asset("template.html"))
