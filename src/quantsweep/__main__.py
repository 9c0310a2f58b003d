"""`python -m quantsweep <command> [key=value ...]`: the tools that work on results rather than models."""

from __future__ import annotations

import sys

COMMANDS = {
    "size": "quantsweep.sizing.cli",
    "leaderboard": "quantsweep.results.cli",
    "agree": "quantsweep.results.agreement",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m quantsweep {{{','.join(COMMANDS)}}} [key=value ...]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
