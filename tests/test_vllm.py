"""eval.backend=vllm and the vLLM deploy probe, on a tiny Llama, in the vLLM environment (`make vllm-env`).

The tests marked `vllm` are skipped where that environment is not built; the missing-environment error is
checked everywhere.
"""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from quantsweep import pipeline, recipes, recovery, tracking, validate
from quantsweep.devices import accelerator
from quantsweep.errors import ConfigError
from quantsweep.evaluation import deploy, vllm_env
from quantsweep.quantize import quantize
from quantsweep.results import collect
from quantsweep.results.render import to_markdown
from quantsweep.sizing.cli import main as size_main


def _built() -> bool:
    try:
        vllm_env.find_python()
    except ConfigError:
        return False
    return True


needs_vllm = pytest.mark.skipif(
    not _built(), reason="no vLLM environment (.venv-vllm/ or $QUANTSWEEP_VLLM_PYTHON): run `make vllm-env`"
)
# The tiny Llama's layout, with head_dim 64: a head size vLLM's CPU attention backend lists as supported
# (conftest's 48 is not listed, though vLLM 0.32 does run it).
LAYERS, KV_HEADS, HEAD_DIM, CONTEXT = 2, 2, 64, 512
KV_GIB = 1


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("vllm") / "tiny-llama-hd64", hidden=4 * HEAD_DIM)


@pytest.fixture(scope="module")
def scored(llama, task_file, calib_file, tmp_path_factory):
    """A W8A8 and a W4A16 point (and their shared baseline) scored by vLLM through the real pipeline; the
    W8A8 point also gets the deployability check."""
    from conftest import base_overrides, compose

    store = tmp_path_factory.mktemp("vllm-store")
    out = {}
    for scheme, check in (("W8A8", "true"), ("W4A16", "false")):
        overrides = [f"scheme={scheme}", "eval.backend=vllm", f"deploy_check={check}"]
        cfg = compose([*base_overrides(llama, task_file, calib_file, store), *overrides])
        out[scheme] = cfg, pipeline.run(cfg)
    return out


@pytest.mark.vllm
@needs_vllm
def test_baseline_and_points_score_through_vllm_with_per_item_scores(scored):
    baselines = set()
    for scheme, (cfg, outcome) in scored.items():
        assert outcome.status == "FINISHED", f"{scheme}: {outcome.error}"
        run = mlflow.get_run(outcome.run_id)
        m = run.data.metrics
        baseline = mlflow.get_run(run.data.tags[tracking.BASELINE_RUN])
        baselines.add(baseline.info.run_id)
        assert run.data.params["eval.backend"] == baseline.data.params["eval.backend"] == "vllm"
        items = tracking.load_items(outcome.run_id)["hellaswag_file"]["acc_norm"]
        base_items = tracking.load_items(baseline.info.run_id)["hellaswag_file"]["acc_norm"]
        assert sorted(items) == sorted(base_items) == list(range(int(cfg.eval.limit)))
        assert sum(items.values()) / len(items) == pytest.approx(m["accuracy"])
        assert sum(base_items.values()) / len(base_items) == pytest.approx(m["baseline_accuracy"])
        assert run.data.tags[tracking.RECOVERY_STDERR] == "paired"
        assert m["recovery_stderr"] == pytest.approx(recovery.paired_stderr(items, base_items, adjusted=True))
        # lm-eval's CLI in another process: load time is not separable from scoring, so it is not logged.
        assert "time_eval_load_s" not in m and m["time_eval_s"] > 0
    assert len(baselines) == 1  # one vLLM baseline serves both points


@pytest.mark.vllm
@needs_vllm
def test_a_point_logs_whether_vllm_deploys_it(scored):
    checked = mlflow.get_run(scored["W8A8"][1].run_id)
    m = checked.data.metrics
    assert m["vllm_loads"] == 1.0 and m["vllm_gen_tokens_per_s"] > 0 and m["vllm_kv_cache_tokens"] > 0
    assert m["vllm_max_concurrency"] == pytest.approx(m["vllm_kv_cache_tokens"] / CONTEXT)
    assert deploy.ERROR_TAG not in checked.data.tags and m["time_deploy_check_s"] > 0
    skipped = mlflow.get_run(scored["W4A16"][1].run_id).data.metrics  # deploy_check=false
    assert not any(name.startswith("vllm_") for name in skipped)
    # The leaderboard's vLLM column: ✓ for the checked point, - where no check ran.
    cfg = scored["W8A8"][0]
    board = collect(cfg.tracking.uri, cfg.tracking.experiment).set_index("run_id")
    assert board.at[checked.info.run_id, "vllm"] == "loads"
    assert pd.isna(board.at[scored["W4A16"][1].run_id, "vllm"])
    assert "| ✓ |" in to_markdown(board.reset_index())


@pytest.mark.vllm
@needs_vllm
def test_the_sizing_calculator_shows_what_vllm_measured_beside_the_estimate(scored, llama, capsys):
    cfg, outcome = scored["W8A8"]
    m = mlflow.get_run(outcome.run_id).data.metrics
    args = [f"model={llama}", "context=512", "concurrency=4", f"run={outcome.run_id}"]
    assert size_main([*args, f"tracking_uri={cfg.tracking.uri}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(
        f"measured by vLLM (run {outcome.run_id}): KV cache holds {m['vllm_kv_cache_tokens']:,.0f}"
    )
    assert "2,048 tokens: fits" in line


@pytest.mark.vllm
@needs_vllm
def test_vllm_scores_each_item_as_the_hf_backend_does(scored, llama, tmp_path):
    """The same model scored in this process by lm-eval's HF backend picks the same endings."""
    from quantsweep.evaluation.harness import evaluate

    cfg, outcome = scored["W8A8"]
    baseline_run = mlflow.get_run(outcome.run_id).data.tags[tracking.BASELINE_RUN]
    by_vllm = tracking.load_items(baseline_run)["hellaswag_file"]
    hf = copy.deepcopy(cfg.eval)
    hf.backend = "hf"
    by_hf = evaluate(str(llama), hf, tmp_path, cfg.seed, compressed=False).items["hellaswag_file"]
    assert by_vllm["acc"] == by_hf["acc"] and by_vllm["acc_norm"] == by_hf["acc_norm"]


@pytest.fixture(scope="module")
def checkpoints(llama, tmp_path_factory) -> dict[str, Path]:
    """A W4A16 checkpoint (vLLM CPU runs it) and an NVFP4A16 one (its FP4 kernels are CUDA-only)."""
    from conftest import compose

    folder = tmp_path_factory.mktemp("vllm-ckpt")
    made = {}
    for scheme in ("W4A16", "NVFP4A16"):
        cfg = compose(["model=custom", f"model.source={llama}", f"scheme={scheme}"])
        quantize(str(llama), recipes.build_recipe(cfg.scheme, ["lm_head"]), folder / scheme, None, 0)
        made[scheme] = folder / scheme
    return made


@pytest.mark.vllm
@needs_vllm
def test_deploy_probe_measures_a_checkpoint_vllm_loads(checkpoints, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", str(KV_GIB))
    result = deploy.check(checkpoints["W4A16"])
    assert result.loads and result.error is None, result.error
    assert result.load_s > 0 and result.gen_tokens_per_s > 0
    assert result.max_model_len == CONTEXT  # the model's context, when none is asked for
    if accelerator() == "cpu":
        # K and V, per layer and KV head, head_dim bf16 values per token, in the KV budget given.
        per_token = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2
        assert result.kv_cache_tokens == KV_GIB * 2**30 // per_token
    assert result.max_concurrency == pytest.approx(result.kv_cache_tokens / CONTEXT)
    assert result.metrics()["vllm_loads"] == 1.0 and result.tags() == {}


@pytest.mark.vllm
@needs_vllm
def test_deploy_probe_records_why_vllm_cannot_load_a_checkpoint(checkpoints):
    result = deploy.check(checkpoints["NVFP4A16"])
    assert not result.loads and result.load_s is None and result.gen_tokens_per_s is None
    # vLLM's own root cause from its engine's log, not the front end's "see root cause above".
    assert "FP4" in result.error and "root cause" not in result.error and "\n" not in result.error
    assert result.metrics()["vllm_loads"] == 0.0 and result.tags() == {deploy.ERROR_TAG: result.error}


def test_a_missing_vllm_environment_is_one_clear_error_before_any_work(make_cfg, tmp_path, monkeypatch):
    """No eval.python, no $QUANTSWEEP_VLLM_PYTHON, no .venv-vllm/ here or in the (relocated) repo."""
    monkeypatch.delenv(vllm_env.ENV_PYTHON, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vllm_env, "REPO", tmp_path)
    cfg = make_cfg("eval.backend=vllm")
    with pytest.raises(ConfigError, match=r"eval.backend='vllm' needs the vLLM environment.*make vllm-env"):
        pipeline.run(cfg)
    assert not (tmp_path / "mlruns").exists()  # refused before any run was logged
    with pytest.raises(ConfigError, match="make vllm-env"):
        deploy.check(tmp_path / "any-checkpoint")
    monkeypatch.setenv(vllm_env.ENV_PYTHON, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(ConfigError, match=r"QUANTSWEEP_VLLM_PYTHON=.*does not exist.*make vllm-env"):
        pipeline.run(cfg)


def test_an_unknown_backend_is_refused_naming_the_known_ones(make_cfg):
    with pytest.raises(ConfigError, match=r"eval.backend='sglang' is not one of hf, vllm"):
        validate.check_eval(make_cfg("eval.backend=sglang").eval)


def test_a_refusal_keeps_the_reasons_vllm_logs_after_its_exception_line():
    """vLLM logs "Failed to find a kernel ... Reasons:" and then one line per kernel it tried, each under the
    same prefix; the tag keeps them all, and stops where that record ends."""
    head = "(Worker pid=7) ERROR 11-29 21:11:10 [multiproc_executor.py:953] "
    log = "\n".join(
        [
            "(EngineCore pid=6) INFO 11-29 21:11:09 [core.py:90] loading",
            head + "ValueError: Failed to find a kernel that can implement the WNA16 linear layer. Reasons: ",
            head + " KernelA cannot implement due to: Unsupported quant type uint8b128",
            head + " KernelB cannot implement due to: requires an AMD Zen CPU.",
            head,
            "(EngineCore pid=6) ERROR 11-29 21:11:12 [core.py:1510] EngineCore failed to start.",
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
        ]
    )
    assert deploy.reason(log) == (
        "ValueError: Failed to find a kernel that can implement the WNA16 linear layer. Reasons: "
        "KernelA cannot implement due to: Unsupported quant type uint8b128; "
        "KernelB cannot implement due to: requires an AMD Zen CPU."
    )
    # An exception line with nothing after it stays one line.
    assert (
        deploy.reason(head + "ValueError: no kernel\n(EngineCore pid=6) INFO done") == "ValueError: no kernel"
    )
