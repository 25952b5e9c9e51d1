"""Errors a user can cause. The CLI prints them as one line and exits 2 — never a traceback."""


class UserError(Exception):
    """A problem with the user's input: a file, a config value, a server. The message names what and the fix.

    Always one line: a line break inside a name the message quotes (a YAML key, a folder, an override written
    with a newline) is shown escaped, as `\\n`, so the line stays one."""

    def __init__(self, message: str = "", *args):
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """Line breaks (all that str.splitlines() knows) escaped, so a message is one line in any terminal or log."""
    if len(text.splitlines()) <= 1 and not text.endswith(("\n", "\r")):
        return text
    return "".join(repr(c)[1:-1] if c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029" else c for c in text)
