"""Placeholder: replaced by the module's owner."""


def register(sub) -> None:
    pass
