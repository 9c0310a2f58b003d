"""The one error type users see for bad input, and the one way a command reports it and stops."""

from __future__ import annotations

import sys
from typing import NoReturn


class ConfigError(ValueError):
    """Raised by pre-flight validation, before any model is loaded or anything is logged."""


def fail(message: str, code: int = 2, command: str | None = None) -> NoReturn:
    """Print `quantsweep: error: <message>` on stderr and exit (2: bad input, no traceback).

    `command` names a subcommand (`quantsweep size: error: ...`), so its users see which tool refused."""
    prog = "quantsweep" if command is None else f"quantsweep {command}"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)
