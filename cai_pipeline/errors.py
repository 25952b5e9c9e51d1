"""Errors a user can cause. The CLI prints them as one line and exits 2 — never a traceback."""


class UserError(Exception):
    """A problem with the user's input: a file, a config value, a server. The message names what and the fix."""
