"""What the search checks and derives before any work: its settings, the sweep's space and presets, and
`smallest_first`'s order of predicted sizes, composed with real Hydra configs over the tiny model."""

from __future__ import annotations

import pytest
from conftest import CONF, base_overrides, compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from quantsweep.config import SearchConfig
from quantsweep.errors import ConfigError
from quantsweep.sweeps.search.plan import check_settings, has_groups, make_plan
from quantsweep.sweeps.search.space import key, parse_space


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("floor", -0.1, "outside [0, 1]"),
        ("floor", 1.01, "outside [0, 1]"),
        ("floor_on", "loss", "floor_on"),
        ("confidence", 1.0, "confidence"),
        ("prune_confidence", 0.4, "prune_confidence"),
        ("objective", "params", "objective"),
        ("sampler", "cmaes", "sampler"),
        ("low_fidelity_limit", 0, "low_fidelity_limit"),
        ("n_trials", 0, "n_trials"),
        ("gpu_mem_gb", 0, "gpu_mem_gb"),
    ],
)
def test_bad_settings_are_refused(name, value, message):
    settings = SearchConfig(**{"floor": 0.9, "floor_on": "recovery", name: value})
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_settings(settings)


def test_layers_group_merges_into_scheme_layer_overrides():
    assert dict(compose([]).scheme.layer_overrides) == {}
    cfg = compose(["scheme=W4A16", "layers=down_proj_w8"])
    assert dict(cfg.scheme.layer_overrides) == {"re:.*down_proj": "W8A16"}
    assert cfg.scheme.preset == "W4A16"
    assert dict(compose(["layers=attn_w8"]).scheme.layer_overrides) == {r"re:.*self_attn\..*_proj": "W8A8"}
    assert dict(compose(["layers=mlp_w8"]).scheme.layer_overrides) == {r"re:.*mlp\..*_proj": "W8A8"}


def test_search_smallest_selects_the_optuna_sweeper_and_its_space():
    import quantsweep.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["sweep=search_smallest"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.quantsweep_sweepers.OptunaSweeper"
    assert cfg.calibration.name == "hellaswag_file"
    lines = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    space = parse_space(OverridesParser.create().parse_overrides([*lines, "scheme.algorithm=RTN"]))
    assert space.fixed == ["scheme.algorithm=RTN"]
    assert space.dims["scheme.group_size"] == ["32", "64", "128"]
    presets = {"W4A16": "W4A16", "W4A16_ASYM": "W4A16_ASYM", "W8A16": "W8A16", "W8A8": "W8A8"}
    presets["FP8_dynamic"] = "FP8_DYNAMIC"
    configs = space.configurations(lambda p: has_groups(presets[p["scheme"]]))
    # (3 grouped schemes x 3 sizes + 2 channel-wise) x 3 ignore lists x 3 layer groups.
    assert len(configs) == 11 * 3 * 3
    assert {"scheme": "W8A8", "ignore": "lm_head", "layers": "none"} in configs


def test_smallest_first_orders_the_buildable_configurations_by_predicted_size(
    tiny_model, task_file, calib_file, tmp_path, capsys
):
    """W4A16 at group 64 keeps fewer scales than at 32, both are smaller than 8-bit W8A8; group 128 does not
    divide the tiny model's 192 and is left out. A low fidelity as large as eval.limit is none at all."""
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)
    arguments = ["scheme=W4A16,W8A8", "scheme.group_size=32,64,128", "ignore=lm_head", "scheme.algorithm=RTN"]
    settings = SearchConfig(floor=0.5, floor_on="accuracy", sampler="smallest_first", low_fidelity_limit=6)
    overrides = OverridesParser.create().parse_overrides(arguments)
    plan = make_plan(settings, overrides, lambda extra: compose([*base, *extra]))
    assert plan.order == [
        {"scheme": "W4A16", "scheme.group_size": "64"},
        {"scheme": "W4A16", "scheme.group_size": "32"},
        {"scheme": "W8A8"},
    ]
    sizes = [plan.predicted[key(c)] for c in plan.order]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert plan.presets == {"W4A16": "W4A16", "W8A8": "W8A8"}
    assert plan.low_limit is None and plan.identity["low_fidelity_limit"] is None
    assert plan.identity["gpu_mem_gb"] is None  # disk_bytes does not depend on the GPU's memory
    out = capsys.readouterr().out
    assert "smallest first: 3 configurations ordered by predicted disk_bytes" in out
    assert "1 configurations left out: scheme=W4A16 scheme.group_size=128 (scheme.group_size=128" in out


def test_a_space_nothing_of_which_can_be_built_is_refused(tiny_model, task_file, calib_file, tmp_path):
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)
    overrides = OverridesParser.create().parse_overrides(["scheme=W4A16", "scheme.group_size=128,256"])
    settings = SearchConfig(floor=0.5, floor_on="accuracy")
    with pytest.raises(ConfigError, match="no configuration of the space can be built for this model"):
        make_plan(settings, overrides, lambda extra: compose([*base, *extra]))


# scheme × sparsity × algorithm, and the four of the eight that validate.check_sparsity refuses, by hand:
# dense without a sparsity is the baseline, dense has nothing for GPTQ to do, GPTQ refills 2:4's zeros.
LEVERS = ["scheme=dense,W4A16", "sparsity=none,2of4", "scheme.algorithm=RTN,GPTQ"]
REFUSED = [
    {"scheme": "dense", "sparsity": "none", "scheme.algorithm": "RTN"},
    {"scheme": "dense", "sparsity": "none", "scheme.algorithm": "GPTQ"},
    {"scheme": "dense", "sparsity": "2of4", "scheme.algorithm": "GPTQ"},
    {"scheme": "W4A16", "sparsity": "2of4", "scheme.algorithm": "GPTQ"},
]


def test_settings_that_cannot_go_together_are_refused_once_before_any_work(
    tiny_model, task_file, calib_file, tmp_path, capsys
):
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)
    overrides = OverridesParser.create().parse_overrides(LEVERS)
    plan = make_plan(
        SearchConfig(floor=0.5, floor_on="accuracy", sampler="tpe"),
        overrides,
        lambda extra: compose([*base, *extra]),
    )
    assert set(plan.refused) == {key(c) for c in REFUSED}
    assert "GPTQ's error compensation fills in the weights" in plan.refused[key(REFUSED[3])]
    assert "that is the baseline" in plan.refused[key(REFUSED[0])]
    assert len(plan.configurations) == 4 and not any(c in REFUSED for c in plan.configurations)
    assert "quantsweep: 4 configurations refused before any work: scheme=dense" in capsys.readouterr().out


def test_a_space_of_refused_settings_or_a_misspelt_algorithm_fails_in_one_line(
    tiny_model, task_file, calib_file, tmp_path
):
    base = base_overrides(tiny_model, task_file, calib_file, tmp_path)

    def plan(arguments: list[str]) -> None:
        overrides = OverridesParser.create().parse_overrides(arguments)
        make_plan(
            SearchConfig(floor=0.5, floor_on="accuracy", sampler="tpe"),
            overrides,
            lambda extra: compose([*base, *extra]),
        )

    with pytest.raises(ConfigError, match="no configuration of the space can be run: scheme=dense quantizes"):
        plan(["scheme=dense", "sparsity=none", "scheme.algorithm=RTN,GPTQ"])
    with pytest.raises(ConfigError, match="scheme.algorithm='GTPQ' is unknown"):
        plan(["sparsity=none,2of4", "scheme.algorithm=RTN,GTPQ"])
