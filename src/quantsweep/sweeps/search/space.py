"""The search space: the swept keys and their values, read from Hydra overrides, and how a configuration is
named, printed and rerun. Pure (no Hydra composition, no model): testable on override strings."""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from quantsweep.errors import ConfigError

# Sampled only for schemes whose preset has weight groups (see `plan.has_groups`).
GROUP_SIZE = "scheme.group_size"

Key = tuple[tuple[str, str], ...]


def key(params: dict[str, str]) -> Key:
    """A configuration's identity, whatever the order of its parameters."""
    return tuple(sorted(params.items()))


def describe(params: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


@dataclass
class Space:
    """The swept keys with their values (as override strings) and the overrides every trial gets."""

    dims: dict[str, list[str]]
    fixed: list[str]

    def configurations(self, grouped: Callable[[dict[str, str]], bool]) -> list[dict[str, str]]:
        """Every distinct configuration: `scheme.group_size` dropped where the scheme has no groups."""
        keys = list(self.dims)
        seen: dict[Key, dict[str, str]] = {}
        for values in itertools.product(*self.dims.values()):
            params = dict(zip(keys, values, strict=True))
            if GROUP_SIZE in params and not grouped(params):
                del params[GROUP_SIZE]
            seen.setdefault(key(params), params)
        return list(seen.values())


def parse_space(overrides: Iterable[Any]) -> Space:
    """Hydra overrides (sweeper params, then the command line) → a Space; a later key replaces an earlier.

    `choice(...)`, `a,b` and `range(...)` become dimensions; `interval(...)` has no finite set of values
    to try and is refused.
    """
    dims: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        name = override.get_key_element()
        dims.pop(name, None)
        fixed.pop(name, None)
        if not override.is_sweep_override():
            fixed[name] = override.input_line or f"{name}={override.get_value_element_as_str()}"
            continue
        if not override.is_discrete_sweep():
            raise ConfigError(
                f"{override.input_line}: the search tries listed values; "
                "list them with choice(...) or range(...)"
            )
        values = list(override.sweep_string_iterator())
        if not values:
            raise ConfigError(f"{override.input_line} gives no value to try")
        if len(values) == 1:
            fixed[name] = f"{name}={values[0]}"
        else:
            dims[name] = values
    if not dims:
        raise ConfigError(
            "the search space is empty: declare choices in hydra.sweeper.params, "
            "e.g. scheme: choice(W4A16,W8A8)"
        )
    return Space(dims, list(fixed.values()))


def override_line(fixed: list[str], params: dict[str, str]) -> str:
    """`python run.py ...` that reruns one trial's configuration (search.* settings left out)."""
    kept = [o for o in fixed if not o.lstrip("+~").startswith("search.")]
    words = [*kept, *(f"{k}={v}" for k, v in params.items())]
    return " ".join(["python", "run.py", *(shlex.quote(w) for w in words)])
