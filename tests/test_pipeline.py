"""The real pipeline on a tiny Llama: llm-compressor, lm-eval's HF backend and a SQLite MLflow store."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import torch

from quantsweep import pipeline, recovery, tracking


def runs(cfg, role: str | None = None) -> list:
    tracking.setup(cfg.tracking)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    query = f"tags.`{tracking.ROLE}` = '{role}'" if role else ""
    return mlflow.search_runs([exp.experiment_id], filter_string=query, output_format="list")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store shared by this module's runs, so baselines and points can be reused across tests."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def first(tiny_model, task_file, calib_file, store):
    from conftest import base_overrides, compose

    cfg = compose(
        [*base_overrides(tiny_model, task_file, calib_file, store), "scheme=W4A16", "scheme.group_size=64"]
    )
    return cfg, pipeline.run(cfg)


def test_one_run_logs_size_accuracy_recovery_timings_and_artifacts(first):
    cfg, outcome = first
    assert outcome.status == "FINISHED" and not outcome.reused
    run = mlflow.get_run(outcome.run_id)
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    assert p["scheme.preset"] == "W4A16" and p["scheme.group_size"] == "64" and p["scheme.algorithm"] == "RTN"
    assert p["ignore.resolved"] == "lm_head" and p["eval.tasks"] == '["hellaswag_file"]'
    # INT4 weights in groups of 64 with bf16 scales: well under 16 bits, more than 4
    assert 4 < m["bits_per_weight"] < 8 and m["compression_ratio"] > 2
    assert m["disk_bytes"] == sum(f.stat().st_size for f in Path(cfg.output_dir).rglob("*.safetensors"))
    # 2 layers x 2 KV heads x head_dim 48 x 2 (K and V) x 2 bytes
    assert m["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 48 * 2
    assert m["weights_vram_est_gib"] == pytest.approx(1.2 * m["disk_bytes"] / 2**30)
    # The size predicted from the config alone (what the search orders by) is the measured one.
    assert m["disk_bytes_predicted"] == pytest.approx(m["disk_bytes"], rel=1e-3)
    for name in ("accuracy", "accuracy_stderr", "hellaswag_file.acc", "hellaswag_file.acc_norm_stderr"):
        assert name in m
    assert m["accuracy"] == m["hellaswag_file.acc_norm"]
    assert m["recovery"] == pytest.approx(m["accuracy"] / m["baseline_accuracy"])
    assert m["passed"] == float(m["recovery"] >= cfg.eval.floor)
    for phase in ("time_load_s", "time_quantize_s", "time_save_s", "time_eval_s", "time_total_s"):
        assert m[phase] > 0
    # measured on CUDA only, never faked on CPU
    assert ("peak_gpu_mem_quantize_gib" in m) == torch.cuda.is_available()
    assert tags[tracking.ROLE] == "point" and tags["version.llmcompressor"] == version("llmcompressor")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id)}
    assert {"recipe.yaml", "config.yaml", "lm_eval_results.json"} <= artifacts
    results = json.loads(
        Path(run.info.artifact_uri.removeprefix("file://"), "lm_eval_results.json").read_text()
    )
    assert results["results"]["hellaswag_file"]["acc_norm,none"] == m["accuracy"]


def test_recovery_stderr_is_paired_over_the_items_both_runs_scored(first):
    cfg, outcome = first
    run = mlflow.get_run(outcome.run_id)
    m = run.data.metrics
    items = tracking.load_items(outcome.run_id)["hellaswag_file"]["acc_norm"]
    base_items = tracking.load_items(run.data.tags[tracking.BASELINE_RUN])["hellaswag_file"]["acc_norm"]
    assert sorted(items) == sorted(base_items) == list(range(int(cfg.eval.limit)))
    assert sum(items.values()) / len(items) == pytest.approx(m["accuracy"])
    assert sum(base_items.values()) / len(base_items) == pytest.approx(m["baseline_accuracy"])
    assert run.data.tags[tracking.RECOVERY_STDERR] == "paired"
    # Accuracies are in [0, 1]: the paired stderr carries Agresti–Min pseudo-items (tests/test_recovery.py).
    assert m["recovery_stderr"] == pytest.approx(recovery.paired_stderr(items, base_items, adjusted=True))
    _, independent = recovery.recovery(
        m["accuracy"], m["accuracy_stderr"], m["baseline_accuracy"], m["baseline_accuracy_stderr"]
    )
    assert m["recovery_stderr_independent"] == pytest.approx(independent)


def test_paired_stderr_counts_only_the_items_the_models_disagree_on():
    baseline = {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}
    # Recovery 0.5; residuals q - 0.5 b = (0.5, -0.5, 0, 0): sqrt(0.5 / (4 * 3)) / mean(b) 0.5
    assert recovery.paired_stderr({0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}, baseline) == pytest.approx(
        (0.5 / 12) ** 0.5 / 0.5
    )
    assert recovery.paired_stderr(dict(baseline), baseline) == 0.0  # same answers: recovery exactly 1
    assert recovery.paired_stderr({0: 1.0, 1: 1.0}, baseline) is None  # not the same items
    assert recovery.paired_stderr({0: 0.0, 2: 1.0}, {0: 0.0, 2: 0.0}) is None  # baseline scored 0


def test_baseline_is_a_run_of_its_own_and_reused_by_other_schemes(
    first, tiny_model, task_file, calib_file, store
):
    from conftest import base_overrides, compose

    cfg, outcome = first
    (baseline,) = runs(cfg, "baseline")
    assert baseline.data.metrics["num_parameters"] > 0 and "accuracy" in baseline.data.metrics
    second = pipeline.run(compose([*base_overrides(tiny_model, task_file, calib_file, store), "scheme=W8A8"]))
    assert second.status == "FINISHED"
    assert len(runs(cfg, "baseline")) == 1
    tags = mlflow.get_run(second.run_id).data.tags
    assert tags[tracking.BASELINE_RUN] == baseline.info.run_id
    assert mlflow.get_run(outcome.run_id).data.tags[tracking.BASELINE_RUN] == baseline.info.run_id


def test_finished_point_is_not_redone_unless_forced(first):
    cfg, outcome = first[0].copy(), first[1]
    before = len(runs(cfg))
    again = pipeline.run(cfg)
    assert again.reused and again.run_id == outcome.run_id and len(runs(cfg)) == before
    cfg.force = True
    forced = pipeline.run(cfg)
    assert not forced.reused and forced.run_id != outcome.run_id and len(runs(cfg)) == before + 1
    forced_tags = mlflow.get_run(forced.run_id).data.tags
    assert forced_tags[tracking.CHECKPOINT_REUSED] == "false"  # force quantizes again too


def test_a_point_evaluated_differently_reuses_the_checkpoint(first):
    """Another evaluation of the same quantization (a search's second fidelity, a grid over few-shot
    counts) is a new point run on the same checkpoint: nothing is quantized again."""
    cfg, outcome = first[0].copy(), first[1]
    assert mlflow.get_run(outcome.run_id).data.tags[tracking.CHECKPOINT_REUSED] == "false"
    checkpoints = sorted(Path(cfg.output_dir).expanduser().rglob("model*.safetensors"))
    cfg.eval.limit = 4
    other = pipeline.run(cfg)
    assert other.status == "FINISHED" and not other.reused and other.run_id != outcome.run_id
    run = mlflow.get_run(other.run_id)
    assert run.data.tags[tracking.CHECKPOINT_REUSED] == "true"
    assert "time_quantize_s" not in run.data.metrics and run.data.metrics["time_eval_s"] > 0
    assert run.data.metrics["disk_bytes"] == mlflow.get_run(outcome.run_id).data.metrics["disk_bytes"]
    assert sorted(Path(cfg.output_dir).expanduser().rglob("model*.safetensors")) == checkpoints


def test_gptq_calibrates_on_the_configured_text(make_cfg):
    cfg = make_cfg("scheme=W4A16_GPTQ", "scheme.group_size=32")
    outcome = pipeline.run(cfg)
    assert outcome.status == "FINISHED"
    params = mlflow.get_run(outcome.run_id).data.params
    assert params["scheme.needs_calibration"] == "True" and params["calibration.num_samples"] == "8"
    recipe = next(Path(cfg.output_dir).rglob("recipe.yaml")).read_text()
    assert "GPTQModifier" in recipe and "group_size: 32" in recipe


def test_a_run_that_fails_after_starting_is_logged_failed_with_its_error(first):
    """The baseline exists (acc_norm); a point asking for a metric the task lacks fails after quantizing."""
    cfg = first[0].copy()
    cfg.scheme.group_size = 32
    cfg.eval.primary_metric = "exact_match"
    outcome = pipeline.run(cfg)
    assert outcome.status == "FAILED" and "exact_match" in outcome.error
    run = mlflow.get_run(outcome.run_id)
    assert run.info.status == "FAILED" and "exact_match" in run.data.tags[tracking.ERROR]
    assert "disk_bytes" in run.data.metrics  # what was measured before the failure is kept
    assert "error.txt" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_a_failing_baseline_is_logged_failed_and_stops_the_point(make_cfg):
    cfg = make_cfg("scheme=W8A8", "eval.primary_metric=exact_match")
    with pytest.raises(RuntimeError, match="baseline evaluation of custom failed: KeyError: 'exact_match'"):
        pipeline.run(cfg)
    (baseline,) = runs(cfg, "baseline")
    assert baseline.info.status == "FAILED" and runs(cfg, "point") == []


def test_lm_eval_in_another_interpreter_gives_the_same_scores(tiny_model, task_file, tmp_path):
    """The mechanism the vLLM backend uses (lm-eval's CLI in a separate environment), run with hf here."""
    from conftest import compose

    from quantsweep.evaluation.harness import evaluate

    cfg = compose(
        ["model=custom", f"model.source={tiny_model}", f"eval.data_path={task_file}", "eval.limit=6"]
    )
    in_process = evaluate(str(tiny_model), cfg.eval, tmp_path, 0, compressed=False)
    cfg.eval.python = sys.executable
    cfg.eval.dtype = "float32"
    cfg.eval.device = "cpu"
    elsewhere = evaluate(str(tiny_model), cfg.eval, tmp_path, 0, compressed=False)
    assert elsewhere.metrics["hellaswag_file"]["acc"] == in_process.metrics["hellaswag_file"]["acc"]
    assert elsewhere.primary == pytest.approx(in_process.primary)
    assert elsewhere.raw["n-samples"]["hellaswag_file"]["effective"] == 6
    # Per-item scores come back from the CLI's --log_samples files too, for paired recovery stderrs.
    assert elsewhere.items["hellaswag_file"]["acc"] == in_process.items["hellaswag_file"]["acc"]
    assert sorted(elsewhere.items["hellaswag_file"]["acc_norm"]) == list(range(6))


@pytest.mark.parametrize("scheme", ["NVFP4A16", "MXFP4A16"])
def test_fp4_checkpoints_evaluate_on_cpu(make_cfg, scheme):
    """Decompressed FP4 weights come back bf16; the float32 CPU evaluation must still run."""
    outcome = pipeline.run(make_cfg(f"scheme={scheme}"))
    assert outcome.status == "FINISHED", outcome.error
    assert 0 <= outcome.metrics["accuracy"] <= 1 and outcome.metrics["bits_per_weight"] < 8
