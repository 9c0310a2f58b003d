"""The search space read from Hydra overrides, and the line that reruns a configuration."""

from __future__ import annotations

import shlex

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from quantsweep.errors import ConfigError
from quantsweep.sweeps.search.space import GROUP_SIZE, Space, key, override_line, parse_space


def test_space_refuses_continuous_ranges():
    parser = OverridesParser.create()
    with pytest.raises(ConfigError, match="choice"):
        parse_space(parser.parse_overrides(["scheme.group_size=interval(32,128)"]))
    with pytest.raises(ConfigError, match="empty"):
        parse_space(parser.parse_overrides(["scheme=W4A16"]))
    space = parse_space(parser.parse_overrides(["scheme.group_size=range(32,97,32)", "seed=1"]))
    assert space.dims == {"scheme.group_size": ["32", "64", "96"]} and space.fixed == ["seed=1"]


def test_a_later_override_replaces_an_earlier_one():
    parser = OverridesParser.create()
    space = parse_space(parser.parse_overrides(["scheme=choice(W4A16,W8A8)", "ignore=a,b", "scheme=W8A16"]))
    assert space.dims == {"ignore": ["a", "b"]} and space.fixed == ["scheme=W8A16"]


def test_group_size_is_dropped_where_the_scheme_has_no_groups():
    space = Space({"scheme": ["W4A16", "W8A8"], GROUP_SIZE: ["32", "64"]}, [])
    configs = space.configurations(lambda p: p["scheme"] == "W4A16")
    assert configs == [
        {"scheme": "W4A16", GROUP_SIZE: "32"},
        {"scheme": "W4A16", GROUP_SIZE: "64"},
        {"scheme": "W8A8"},
    ]
    assert key({"b": "1", "a": "2"}) == key({"a": "2", "b": "1"})


def test_override_line_quotes_and_leaves_search_settings_out():
    line = override_line(
        ["sweep=search_smallest", "search.floor=0.9", "ignore.patterns=[lm_head,'re:.*x']"],
        {"scheme": "W4A16", "scheme.group_size": "64"},
    )
    assert shlex.split(line) == [
        "python",
        "run.py",
        "sweep=search_smallest",
        "ignore.patterns=[lm_head,'re:.*x']",
        "scheme=W4A16",
        "scheme.group_size=64",
    ]
