"""The key=value parser both `python -m quantsweep` tools use, and the one way they report bad input."""

from __future__ import annotations

import pytest

from quantsweep import keyvalue
from quantsweep.errors import ConfigError, fail

PARSERS = {"name": str, "count": int, "ratio": float}
DEFAULTS = {"name": None, "count": 1, "ratio": 0.5}


def test_values_are_typed_over_the_defaults_and_prefixed_keys_kept_raw():
    args, tags = keyvalue.parse(
        ["count=3", "tag.a=x=y", "name=n"], PARSERS, DEFAULTS, "name=n", prefix="tag."
    )
    assert args == {"name": "n", "count": 3, "ratio": 0.5} and tags == {"a": "x=y"}
    assert DEFAULTS["count"] == 1  # the command's defaults are not modified


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["name"], "'name' is not key=value (e.g. name=n)"),
        (["count=1", "count=2"], "count= given twice: give it once"),
        (["size=2"], "unknown key 'size': accepted keys are name, count, ratio, tag.<name>"),
        (["tag.=2"], "unknown key 'tag.'"),
        (["count=two"], "count='two' is not a valid int"),
        (["ratio=half"], "ratio='half' is not a fraction"),
    ],
)
def test_bad_arguments_name_the_key_and_the_fix(argv, message):
    with pytest.raises(ConfigError) as error:
        keyvalue.parse(argv, PARSERS, DEFAULTS, "name=n", {"ratio": "a fraction"}, prefix="tag.")
    assert str(error.value).startswith(message)


def test_fail_prints_one_line_and_exits(capsys):
    with pytest.raises(SystemExit) as exit_:
        fail("x=1 is wrong: give x=2")
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        fail("no such store", code=3, command="leaderboard")
    assert exit_.value.code == 3
    assert capsys.readouterr().err == (
        "quantsweep: error: x=1 is wrong: give x=2\nquantsweep leaderboard: error: no such store\n"
    )
