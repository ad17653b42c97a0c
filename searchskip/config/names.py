"""The one rule for names that become folder names under ``outputs/``: a job's ``name:`` and the
study name of ``searchskip search --study`` (the study folder is ``<outputs>/<name>``).

A name is 1 to 100 ASCII letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit:
so it is one path component (no ``/``, never ``.`` or ``..``, never absolute) and the same on
every file system and locale.
"""

from __future__ import annotations

import re

__all__ = ["NAME_RULE", "name_problem"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)

NAME_RULE = ("must be usable as a folder name: 1 to 100 ASCII letters, digits, '.', '_' or '-', starting with "
             "a letter or digit")
"""The rule, as error messages state it."""


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a study or job name (the rule and the value), or ``None``."""
    if not name.strip():
        return "must be a non-empty name (it names a folder under outputs/), but got an empty string"
    if not _NAME.fullmatch(name):
        return f"{NAME_RULE}, but got {name!r}"
    return None
