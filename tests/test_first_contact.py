"""What a first user meets: the design card's sweep on a model whose widths 128 does not divide, the group
size rule, bad inputs in one line, where the evaluated items come from, and how much `make run` evaluates."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import CONF, ROOT, base_overrides, compose

from quantsweep import calibration, point, recipes, tracking, validate
from quantsweep.errors import ConfigError

DESIGN_CARD = ["scheme=W4A16,FP8_dynamic"]
# Sweeps over the default model that must run as shipped (the search has its own tests).
# The grids (a search samples its space: its points are not a product to expand here).
READY_MADE = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml") if not p.stem.startswith("search_"))


def run_py(args: list[str], work: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", *args, f"hydra.sweep.dir={work}/multirun", f"hydra.run.dir={work}/run"]
    environ = os.environ | {"HYDRA_FULL_ERROR": "0"} | (env or {})
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=environ)


def point_runs(work: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    experiment = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    return [r for r in runs if r.data.tags.get(tracking.ROLE) == "point"]


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def design_card(tiny_model, task_file, calib_file, tmp_path_factory):
    """`run.py -m scheme=W4A16,FP8_dynamic` on the tiny model (hidden 192: like SmolLM2's 576, not a
    multiple of 128)."""
    work = tmp_path_factory.mktemp("card")
    card = run_py(["-m", *base_overrides(tiny_model, task_file, calib_file, work), *DESIGN_CARD], work)
    return work, card, point_runs(work)


def test_design_card_sweep_finishes_with_the_group_size_it_used(design_card, task_file):
    work, card, runs = design_card
    assert card.returncode == 0, card.stderr[-3000:]
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    params = {r.data.params["scheme.name"]: r.data.params for r in runs}
    # W4A16's 128 does not divide 192; 64 is the largest power of two that divides 192 and 384 (the MLP).
    assert params["W4A16"]["scheme.group_size_used"] == "64"
    assert params["W4A16"]["scheme.group_size"] == "None"  # the config as given
    assert params["FP8_dynamic"]["scheme.group_size_used"] == point.NOT_APPLICABLE
    assert "W4A16's groups of 128 do not divide" in card.stderr and "using groups of 64" in card.stderr
    quantized = [
        json.loads(p.read_text())["quantization_config"] for p in work.glob("checkpoints/*/*/config.json")
    ]
    weights = [q["config_groups"]["group_0"]["weights"] for q in quantized]
    assert sorted((w["num_bits"], w["group_size"]) for w in weights) == [(4, 64), (8, None)]


def test_runs_and_summary_say_where_the_items_came_from(design_card, task_file):
    work, card, runs = design_card
    source = f"file:{task_file.resolve()} sha256:{sha16(task_file)}"
    assert {r.data.tags[tracking.DATA_SOURCE] for r in runs} == {source}
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    baseline = mlflow.get_run(runs[0].data.tags[tracking.BASELINE_RUN])
    assert baseline.data.tags[tracking.DATA_SOURCE] == source
    assert f"custom baseline: hellaswag_file, 1-shot, 6 items, from {source}" in card.stdout


@pytest.mark.slow
def test_readme_sweep_with_an_explicit_group_size(tiny_model, task_file, calib_file, tmp_path):
    overrides = [
        *base_overrides(tiny_model, task_file, calib_file, tmp_path),
        *DESIGN_CARD,
        "scheme.group_size=64",
    ]
    proc = run_py(["-m", *overrides], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = point_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    used = {r.data.params["scheme.name"]: r.data.params["scheme.group_size_used"] for r in runs}
    assert used == {"W4A16": "64", "FP8_dynamic": point.NOT_APPLICABLE}
    assert "scheme.group_size=64 does not apply to preset FP8_DYNAMIC" in proc.stderr


# (hidden, MLP, attention heads, KV heads) of Llama-shaped models.
SMOLLM2 = (576, 1536, 9, 3)  # head dim 64: k/v projections of 192
TINY = (192, 384, 4, 2)  # conftest's tiny model: head dim 48, k/v projections of 96
LLAMA_8B = (4096, 14336, 32, 8)


def meta_llama(hidden: int, intermediate: int, heads: int, kv_heads: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=4,  # first and last kept in bf16 (ignore=lm_head_first_last) leave two
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def fitted(meta, *overrides: str) -> point.Fitting:
    cfg = compose(list(overrides))
    return point.fitting(meta, cfg.scheme, cfg.ignore)


@pytest.mark.parametrize(
    ("shape", "preset", "used"),
    [
        (SMOLLM2, "W4A16", 64),
        ((96, 192, 4, 2), "W4A16", 32),
        (LLAMA_8B, "W4A16", 128),  # the preset's own
        (SMOLLM2, "W8A16", 64),
        (SMOLLM2, "NVFP4", 16),
        (SMOLLM2, "MXFP4", 32),
        # Blocks of 128 x 128 must divide outputs too: the tiny model's k/v projections (96) leave 32.
        (TINY, "FP8_BLOCK", 32),
        (SMOLLM2, "FP8_BLOCK", 64),
        (LLAMA_8B, "FP8_BLOCK", 128),
    ],
)
def test_a_preset_group_size_is_fitted_to_the_model(shape, preset, used):
    found = fitted(meta_llama(*shape), f"scheme={preset}")
    assert found.scheme.group_size == used
    preset_size = recipes.preset_group_size(preset)
    assert (found.note is None) == (used == preset_size)
    if found.note:
        unit = recipes.grouping_unit(preset)
        assert (
            f"{unit} of {preset_size} do not divide" in found.note and f"using {unit} of {used}" in found.note
        )


def test_an_explicit_group_size_is_never_changed():
    smol = meta_llama(*SMOLLM2)
    with pytest.raises(ConfigError, match=r"scheme.group_size=128 .* 576\); use scheme.group_size=64"):
        fitted(smol, "scheme=W4A16", "scheme.group_size=128")
    found = fitted(smol, "scheme=W4A16", "scheme.group_size=32")
    assert found.scheme.group_size == 32 and found.note is None


def test_group_size_on_a_preset_without_groups_is_not_applicable():
    found = fitted(meta_llama(*SMOLLM2), "scheme=FP8_dynamic", "scheme.group_size=64")
    assert found.scheme.group_size is None
    assert "scheme.group_size=64 does not apply to preset FP8_DYNAMIC" in (found.note or "")


def test_the_group_size_used_is_in_the_fingerprint(make_cfg):
    fitted_64, explicit_64, explicit_32 = (
        point.resolve(make_cfg("scheme=W4A16", *extra))
        for extra in ([], ["scheme.group_size=64"], ["scheme.group_size=32"])
    )
    assert fitted_64.fp == explicit_64.fp and fitted_64.checkpoint_fp == explicit_64.checkpoint_fp
    assert explicit_32.fp != explicit_64.fp and explicit_32.checkpoint_fp != explicit_64.checkpoint_fp
    assert fitted_64.group_size_used == 64
    # A group size that does not apply changes nothing: FP8_dynamic with it is FP8_dynamic without it.
    fp8, fp8_64 = (
        point.resolve(make_cfg("scheme=FP8_dynamic", *extra)) for extra in ([], ["scheme.group_size=64"])
    )
    assert fp8.fp == fp8_64.fp and fp8_64.group_size_used == point.NOT_APPLICABLE


def sweep_points(name: str) -> list[list[str]]:
    """The overrides of every point of a ready-made sweep, as the grid sweeper expands them."""
    params = yaml.safe_load((CONF / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[f"sweep={name}", *combo] for combo in itertools.product(*axes)]


@pytest.mark.parametrize("name", READY_MADE)
def test_every_ready_made_sweep_fits_a_model_like_smollm2(name):
    """Each point's scheme fits SmolLM2's widths with no extra override, and builds a recipe; a point that
    needs calibration data on the default model gets it without the hub when a local file is configured."""
    smol = meta_llama(*SMOLLM2)
    for overrides in sweep_points(name):
        cfg = compose(overrides)
        found = point.fitting(smol, cfg.scheme, cfg.ignore)
        recipes.build_recipe(found.scheme, found.ignore)
        if cfg.model.name == "smollm2_135m" and recipes.needs_calibration(cfg.scheme):
            assert cfg.calibration.name == "hellaswag_file", overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=custom"], "model.source is not set; model=custom needs it"),
        (["eval.batch_size=zero"], "eval.batch_size='zero' is not a batch size"),
        (
            ["tracking.uri=mysql://quant:secret@localhost/mlflow"],
            "tracking.uri='mysql://quant:***@localhost/mlflow' needs the database driver 'MySQLdb'",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_work(task_file, tmp_path, overrides, message):
    store = (
        [] if overrides[0].startswith("tracking.uri") else [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    )
    proc = run_py([*store, f"eval.data_path={task_file}", *overrides], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"quantsweep: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr and "full_key" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweep_to_a_store_without_its_driver_stops_in_one_line(task_file, tmp_path):
    store = "tracking.uri=mysql://quant:secret@localhost/mlflow"
    proc = run_py(["-m", store, f"eval.data_path={task_file}", "scheme=W8A8,FP8_dynamic"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("quantsweep: error: tracking.uri='mysql://quant:***@localhost/mlflow' needs")


@pytest.mark.slow
def test_a_sweep_point_without_a_model_source_fails_alone_in_one_line(task_file, calib_file, tmp_path):
    base = [
        o for o in base_overrides(Path("unused"), task_file, calib_file, tmp_path) if "model.source" not in o
    ]
    proc = run_py(["-m", *base, "scheme=W8A8,FP8_dynamic"], tmp_path)
    assert proc.returncode == 1 and "2 of 2 points failed" in proc.stderr, proc.stderr[-3000:]
    runs = point_runs(tmp_path)
    errors = {r.data.tags[tracking.ERROR] for r in runs}
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)
    assert errors == {f"ConfigError: model.source is not set; {validate._MANDATORY_FIXES['model.source']}"}


def test_quick_and_seed_profiles_never_share_a_fingerprint(task_file):
    data = f"eval.data_path={task_file}"
    seed, quick = compose([data]), compose([data, "profile=quick"])
    assert (seed.eval.num_fewshot, seed.eval.limit) == (5, 250)
    assert (quick.eval.num_fewshot, quick.eval.limit) == (0, 100)
    assert point.baseline_fingerprint(seed) != point.baseline_fingerprint(quick)


def test_default_evaluation_reads_the_local_file_when_one_is_configured_else_the_hub(task_file, monkeypatch):
    monkeypatch.delenv("QUANTSWEEP_HELLASWAG", raising=False)
    hub = compose([])
    assert list(hub.eval.tasks) == ["hellaswag"] and point.data_source(hub.eval) == "hub:hellaswag"
    monkeypatch.setenv("QUANTSWEEP_HELLASWAG", str(task_file))
    local = compose([])
    assert list(local.eval.tasks) == ["hellaswag_file"] and local.eval.data_path == str(task_file)
    assert point.data_source(local.eval) == f"file:{task_file.resolve()} sha256:{sha16(task_file)}"


def test_hellaswag_calibration_reads_the_local_file_when_one_is_configured_else_the_hub(
    task_file, monkeypatch
):
    monkeypatch.delenv("QUANTSWEEP_HELLASWAG", raising=False)
    hub = compose(["calibration=hellaswag_file"]).calibration
    assert (hub.dataset, hub.layout, hub.split) == ("Rowan/hellaswag", "auto", "train")
    calibration.check(hub)
    monkeypatch.setenv("QUANTSWEEP_HELLASWAG", str(task_file))
    local = compose(["calibration=hellaswag_file"]).calibration
    assert (local.dataset, local.layout) == (str(task_file), "hellaswag")
    calibration.check(local)


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return [node] if isinstance(node, str) else []


def test_no_path_outside_the_repository_is_baked_into_the_configs():
    for path in CONF.rglob("*.yaml"):
        for value in strings(yaml.safe_load(path.read_text())):
            assert "../" not in value and not value.startswith(("/", "~")), f"{path}: {value}"
