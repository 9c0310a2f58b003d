"""Bad input: one ConfigError naming the value and the fix, raised before any model work or MLflow run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, base_overrides, compose
from hydra.errors import ConfigCompositionException

from quantsweep import pipeline, point, validate
from quantsweep.errors import ConfigError


def assert_rejected(cfg, *fragments: str) -> str:
    with pytest.raises(ConfigError) as err:
        pipeline.run(cfg)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    store = Path(cfg.tracking.uri.removeprefix("sqlite:///"))
    assert not store.exists(), "validation must happen before the tracking store is touched"
    return message


def test_explicit_group_size_that_does_not_divide_a_layer(make_cfg):
    # groups of 128 vs the tiny model's hidden size 192 (SmolLM2: 576): given explicitly, never changed
    cfg = make_cfg("scheme=W4A16", "scheme.group_size=128")
    assert_rejected(cfg, "scheme.group_size=128", "192", "scheme.group_size=64")


def test_unknown_preset(make_cfg):
    assert_rejected(make_cfg("scheme.preset=W5A5"), "scheme.preset='W5A5'", "W4A16")


def test_unknown_scheme_and_model_names_fail_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException, match="W5A5"):
        make_cfg("scheme=W5A5")
    with pytest.raises(ConfigCompositionException, match="gpt5"):
        make_cfg("model=gpt5")


def test_unknown_algorithm(make_cfg):
    assert_rejected(make_cfg("scheme.algorithm=SPARSEGPT"), "scheme.algorithm='SPARSEGPT'", "GPTQ")


@pytest.mark.parametrize("floor", ["1.5", "-0.1"])
def test_floor_outside_unit_interval(make_cfg, floor):
    assert_rejected(make_cfg(f"eval.floor={floor}"), f"eval.floor={float(floor)}", "0.97")


def test_missing_model_path(make_cfg, tmp_path):
    assert_rejected(make_cfg(f"model.source={tmp_path}/nowhere"), "nowhere", "config.json")


def test_corrupt_checkpoint(make_cfg, tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_rejected(make_cfg(f"model.source={broken}"), "not a readable checkpoint", "re-save")


def test_hub_id_without_hub_or_cache(make_cfg, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert_rejected(
        make_cfg("model.source=no-such-org/no-such-model"), "no-such-org/no-such-model", "local directory"
    )


def test_missing_eval_file(make_cfg, tmp_path):
    assert_rejected(make_cfg(f"eval.data_path={tmp_path}/none.jsonl"), "none.jsonl", "eval.data_path")


def test_missing_calibration_file_for_a_scheme_that_needs_data(make_cfg, tmp_path):
    cfg = make_cfg("scheme=W4A16_GPTQ", "scheme.group_size=64", f"calibration.dataset={tmp_path}/c.txt")
    assert_rejected(cfg, "calibration.dataset=", "c.txt")


def test_unknown_lm_eval_task(make_cfg):
    assert_rejected(make_cfg("eval.tasks=[hellaswag_file,no_such_task]"), "no_such_task", "lm-eval ls tasks")


@pytest.mark.skipif(torch.cuda.is_available(), reason="AWQ runs where CUDA is: nothing to refuse")
def test_awq_needs_a_gpu(make_cfg):
    assert_rejected(make_cfg("scheme=W4A16_AWQ", "scheme.group_size=64"), "AWQ", "GPTQ")


def test_cli_reports_one_line_and_exit_code_2(tiny_model, task_file, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "run.py",
            "model=custom",
            f"model.source={tiny_model}",
            "scheme=W4A16",
            "scheme.group_size=128",
            f"eval.data_path={task_file}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        ],  # fmt: skip
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"HYDRA_FULL_ERROR": "0"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("quantsweep: error: scheme.group_size=128")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_calibration_jsonl_without_the_text_field(make_cfg, tmp_path):
    records = tmp_path / "calib.jsonl"
    records.write_text('{"prompt": "a b c"}\n')
    cfg = make_cfg("scheme=W4A16_GPTQ", "scheme.group_size=64", f"calibration.dataset={records}")
    field = cfg.calibration.text_field
    assert_rejected(cfg, f"calibration.text_field={field!r}", "prompt", "calibration.layout=hellaswag")


def test_unknown_calibration_layout(make_cfg):
    cfg = make_cfg("scheme=W4A16_GPTQ", "scheme.group_size=64", "calibration.layout=csv")
    assert_rejected(cfg, "calibration.layout='csv'", "hellaswag")


def _fit(make_cfg, tiny_model, *overrides: str, extra: dict[str, str] | None = None):
    """The group-size check of a run, on the tiny model built on the meta device (no weights)."""
    from omegaconf import open_dict

    from quantsweep.validate import meta_model

    cfg = make_cfg(*overrides)
    with open_dict(cfg):
        cfg.scheme.layer_overrides.update(extra or {})
    return point.fit(meta_model(str(tiny_model)), cfg.scheme, cfg.ignore)


W4A16_128 = ("scheme=W4A16", "scheme.group_size=128")


def test_layers_a_channel_wise_override_takes_are_not_held_to_the_group_size(make_cfg, tiny_model):
    # Groups of 128 fit only the down projections (input 384); the other layers take 192. Attention is in
    # W8A8, so only gate and up (2 layers x 2) are refused; then with them in W8A8 too, nothing is.
    with pytest.raises(ConfigError, match=r"group_size=128 .* 4 targeted layers .*gate_proj: 192"):
        _fit(make_cfg, tiny_model, *W4A16_128, "layers=attn_w8")
    # With attention and gate/up in channel-wise W8A8, only the down projections remain in groups of 128.
    _fit(make_cfg, tiny_model, *W4A16_128, "layers=attn_w8", extra={"re:.*(gate|up)_proj": "W8A8"})


def test_a_group_wise_override_that_does_not_divide_its_layers(make_cfg, tiny_model):
    target = "re:.*self_attn\\..*_proj"
    with pytest.raises(ConfigError) as err:
        _fit(make_cfg, tiny_model, "scheme=W4A16", "scheme.group_size=64", extra={target: "W8A16"})
    message = str(err.value)
    assert f"scheme.layer_overrides[{target!r}]=W8A16" in message and "192" in message, message
    assert "W8A8" in message, message


def test_custom_model_without_its_source(tiny_model, task_file, calib_file, tmp_path):
    overrides = [
        o for o in base_overrides(tiny_model, task_file, calib_file, tmp_path) if "model.source" not in o
    ]
    assert_rejected(compose(overrides), "model.source is not set", "model.source=/path/to/checkpoint")


@pytest.mark.parametrize("size", ["zero", "0", "-4", "auto:x"])
def test_batch_size_that_is_not_one(make_cfg, size):
    assert_rejected(make_cfg(f"eval.batch_size={size}"), f"eval.batch_size={size!r}", "eval.batch_size=8")


@pytest.mark.parametrize("size", ["auto", "auto:4", "16"])
def test_batch_sizes_lm_eval_takes(size):
    validate.check_batch_size(size)


@pytest.mark.parametrize(
    ("dialect", "driver", "package"),
    [("postgresql", "psycopg", "psycopg[binary]"), ("postgresql+psycopg2", "psycopg2", "psycopg2-binary")]
    + [("mysql", "MySQLdb", "mysqlclient")],
)
def test_database_store_without_its_driver(make_cfg, dialect, driver, package):
    if importlib.util.find_spec(driver) is not None:
        pytest.skip(f"{driver} is installed here")
    cfg = make_cfg(f"tracking.uri={dialect}://quant:secret@localhost/mlflow")
    shown = f"tracking.uri='{dialect}://quant:***@localhost/mlflow'"
    message = assert_rejected(cfg, shown, repr(driver), f"pip install {package}")
    assert "secret" not in message
