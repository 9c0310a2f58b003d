"""Hydra-style `key=value` arguments for the `python -m quantsweep` tools, parsed and typed in one place.

Each command names its keys, their parsers and defaults; the rules (unknown or repeated keys fail, a bad
value names the key and what it should be) and the messages are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quantsweep.errors import ConfigError


def parse(
    argv: Sequence[str],
    parsers: Mapping[str, Callable[[str], Any]],
    defaults: Mapping[str, Any],
    example: str,
    expected: Mapping[str, str] | None = None,
    prefix: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """`key=value` arguments → (typed values over `defaults`, raw values of `<prefix><name>` keys by name).

    `example` is a valid argument shown when one is not key=value; `expected[key]` says what a value that
    its parser rejects (with ValueError) should be, by default "a valid <parser name>". Raises ConfigError.
    """
    args, prefixed, seen = dict(defaults), {}, set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{arg!r} is not key=value (e.g. {example})")
        if key in seen:
            raise ConfigError(f"{key}= given twice: give it once")
        seen.add(key)
        if prefix and key.startswith(prefix) and len(key) > len(prefix):
            prefixed[key.removeprefix(prefix)] = value
            continue
        if key not in parsers:
            accepted = ", ".join([*parsers, *([f"{prefix}<name>"] if prefix else [])])
            raise ConfigError(f"unknown key {key!r}: accepted keys are {accepted}")
        try:
            args[key] = parsers[key](value)
        except ValueError:
            what = (expected or {}).get(key) or f"a valid {getattr(parsers[key], '__name__', 'value')}"
            raise ConfigError(f"{key}={value!r} is not {what}") from None
    return args, prefixed
