"""Files shipped with the package: the constitutions and prompt templates (and where the checkout is)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# In a checkout these are links to the top-level folders (edit those); a wheel carries copies, so an installed
# package finds them too.
RESOURCES = Path(__file__).resolve().parent / "resources"


def resolve_resource(path: str) -> Path:
    """A path as given (relative to the working directory), else one of the shipped resources, so
    `constitutions/harmless.yaml` works from any folder and from an installed package."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    bundled = RESOURCES / p
    return bundled if bundled.exists() else p
