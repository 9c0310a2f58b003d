"""The Optuna search (`sweep=search_smallest`, `hydra/sweeper=quantsweep_optuna`) end to end on the tiny
model: real Hydra multiruns of run.py against a real Optuna SQLite storage and MLflow store; and the plugin
that Hydra's scan imports at every start of run.py, light.

The tiny model's numbers (num_fewshot 0) that the floors below are chosen around: at 4 items every scheme
scores 0.25 or 0.5 (stderr 0.25-0.29), at 8 items 0.25-0.375 (stderr 0.16-0.18).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import ROOT, base_overrides

from quantsweep import tracking
from quantsweep.sweeps.search import decisions
from quantsweep.sweeps.search.decisions import TrialRecord
from quantsweep.sweeps.search.report import EXIT_NO_FEASIBLE
from quantsweep.sweeps.search.space import describe

# The sweep's space narrowed on the command line: 5 configurations (W8A8 has no weight groups).
SPACE = [
    "sweep=search_smallest",
    "scheme=W4A16,W8A16,W8A8",
    "scheme.group_size=32,64",
    "ignore=lm_head",
    "scheme.algorithm=RTN",
    "layers=none",
]
STUDY = "tiny"
# What the plugin scan must not import: the frameworks, and the sweepers' own implementations.
HEAVY = (
    "torch",
    "compressed_tensors",
    "transformers",
    "mlflow",
    "optuna",
    "lm_eval",
    "quantsweep.sweeps.grid",
    "quantsweep.sweeps.search.sweeper",
)


def search_cmd(model: Path, task: Path, calib: Path, work: Path, *extra: str) -> list[str]:
    overrides = [
        *base_overrides(model, task, calib, work),
        "eval.limit=8",
        "eval.num_fewshot=0",
        f"search.storage=sqlite:///{work}/optuna.db",
        "search.low_fidelity_limit=4",
        *SPACE,
        *extra,
    ]
    return [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={work}/multirun"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def point_runs(work: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = mlflow.get_experiment_by_name("quantsweep")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    return [r for r in runs if r.data.tags.get(tracking.ROLE) == "point"]


def load(work: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{work}/optuna.db")


def trial_view(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.user_attrs.get(decisions.RECORD)) for t in study.trials]


def line(stdout: str, prefix: str) -> str:
    return next(x for x in stdout.splitlines() if x.startswith(prefix))


@pytest.fixture(scope="module")
def studied(tiny_model, task_file, calib_file, tmp_path_factory):
    """A TPE study run with a budget of 3 configurations, resumed with 5 (all of them), then again.

    Feasible: accuracy's 55% lower bound (z = 0.126) >= 0.3; at 4 items a 0.25 ± 0.25 scheme's upper bound
    0.28 misses the floor and is pruned, a 0.5 ± 0.29 one goes on to 8 items.
    """
    work = tmp_path_factory.mktemp("search")
    settings = [
        "search.sampler=tpe",
        f"search.study_name={STUDY}",
        "search.floor_on=accuracy",
        "search.floor=0.3",
        "search.confidence=0.55",
    ]
    cmd = search_cmd(tiny_model, task_file, calib_file, work, *settings)
    first = run([*cmd, "search.n_trials=3"])
    after_first = (trial_view(load(work, STUDY)), point_runs(work))
    second = run([*cmd, "search.n_trials=5"])
    after_second = (trial_view(load(work, STUDY)), point_runs(work))
    third = run([*cmd, "search.n_trials=5"])
    return work, (first, second, third), after_first, after_second


@pytest.mark.slow
def test_best_is_feasible_and_nothing_feasible_is_smaller(studied):
    work, (_, second, _), _, _ = studied
    assert second.returncode == 0, second.stderr[-3000:]
    study = load(work, STUDY)
    feasible = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())
    ]
    assert feasible
    best = line(second.stdout, "best: trial ")
    number = int(best.split()[2])
    chosen = study.trials[number]
    assert chosen in feasible and chosen.constraints["floor"] <= 0
    assert chosen.value == min(t.value for t in feasible) == study.best_value
    record = TrialRecord(**chosen.user_attrs[decisions.RECORD])
    assert record.verdict == decisions.FEASIBLE and record.lower >= 0.3
    # The point estimate and its bound are both reported.
    assert f"accuracy {record.value:.3f}" in best and f"lower bound {record.lower:.3f}" in best
    # Every configuration was tried; fully evaluated ones smaller than the best are all infeasible.
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.constraints["floor"] > 0 for t in complete if t.value < chosen.value)


@pytest.mark.slow
def test_low_fidelity_prunes_below_the_floor_and_the_saving_is_logged(studied):
    work, (_, second, _), _, _ = studied
    study = load(work, STUDY)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    for t in pruned:
        record = t.user_attrs[decisions.RECORD]
        assert record["stage"] == "low" and record["full_run_id"] is None
        if record["verdict"] == decisions.PRUNED_FLOOR:
            (upper,) = t.intermediate_values.values()
            assert upper < 0.3 and upper == pytest.approx(record["upper"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("mlflow.runName") == f"search/{STUDY}"]
    saved = sum(t.user_attrs[decisions.RECORD]["duplicate_of"] is None for t in pruned)
    assert parent.data.metrics["full_evaluations_saved"] == saved
    assert f"{saved} full evaluations saved by pruning" in second.stdout
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "search")}
    assert artifacts == {"search/pareto.md", "search/pareto.png", "search/trials.md", "search/result.txt"}
    # Every evaluation is a child of the study's parent run, low and full fidelity alike.
    children = [r for r in point_runs(work) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.data.params["eval.limit"] for r in children} == {"4.0", "8.0"}
    assert {r.data.tags[tracking.SWEEP_ID] for r in children} == {parent.data.tags[tracking.SWEEP_ID]}


@pytest.mark.slow
def test_resumed_study_keeps_its_trials_and_evaluates_nothing_twice(studied):
    work, (first, second, third), (trials_1, runs_1), (trials_2, runs_2) = studied
    assert first.returncode == 0, first.stderr[-3000:]
    distinct = lambda trials: {str(t[2]) for t in trials if t[4]["duplicate_of"] is None}  # noqa: E731
    assert all(t[1].is_finished() for t in trials_1) and len(distinct(trials_1)) == 3
    # The second session continues the study: the first session's trials are untouched.
    assert trials_2[: len(trials_1)] == trials_1
    assert len(distinct(trials_2)) == 5
    # No configuration is evaluated twice at one fidelity, repeats included.
    fingerprints = [r.data.tags[tracking.FINGERPRINT] for r in runs_2 if r.info.status == "FINISHED"]
    assert len(fingerprints) == len(set(fingerprints))
    for _, _, _, _, record in trials_2:
        if record["duplicate_of"] is not None:
            original = trials_2[record["duplicate_of"]][4]
            assert (record["low_run_id"], record["full_run_id"]) == (
                original["low_run_id"],
                original["full_run_id"],
            )
    # The third session finds the budget spent: no trial, no evaluation, the same report.
    assert third.returncode == 0, third.stderr[-3000:]
    assert trial_view(load(work, STUDY)) == trials_2
    assert sorted(r.info.run_id for r in point_runs(work)) == sorted(r.info.run_id for r in runs_2)
    assert "start" not in third.stdout
    assert line(third.stdout, "best: ") == line(second.stdout, "best: ")


@pytest.mark.slow
def test_override_line_reproduces_the_best(studied):
    work, (_, second, _), _, _ = studied
    words = shlex.split(line(second.stdout, "reproduce: ").removeprefix("reproduce: "))
    assert words[:2] == ["python", "run.py"] and "sweep=search_smallest" in words
    assert not [w for w in words if w.startswith("search.")]
    proc = run([sys.executable, *words[1:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    best_run = line(second.stdout, "best: ").split("run ")[-1]
    assert f"MLflow run {best_run}" in proc.stdout and "(reused)" in proc.stdout


@pytest.mark.slow
def test_a_floor_nothing_clears_is_reported_without_a_best(studied, tiny_model, task_file, calib_file):
    """Accuracy 1.0 on every item: every trial is pruned at 4 items (upper bound < 1), none is best.

    Over W4A16 with per-layer-group precision (conf/layers), in the first study's store: a configuration that
    study evaluated in full skips the 4 items and is judged (infeasible) on its full evaluation.
    """
    work = studied[0]
    cmd = search_cmd(
        tiny_model,
        task_file,
        calib_file,
        work,
        "scheme=W4A16",
        "scheme.group_size=32",
        "layers=none,down_proj_w8,attn_w8",
        "search.study_name=impossible",
        "search.floor_on=accuracy",
        "search.floor=1.0",
        "search.sampler=grid",
        "search.n_trials=10",
    )
    proc = run(cmd)
    assert proc.returncode == EXIT_NO_FEASIBLE, proc.stderr[-3000:]
    assert "no configuration clears the floor (accuracy 90% lower bound ≥ 1.0) in " in proc.stdout
    assert "best: " not in proc.stdout and "reproduce: " not in proc.stdout
    assert "closest:" in proc.stdout
    study = load(work, "impossible")
    evaluated = [t for t in study.trials if t.user_attrs[decisions.RECORD]["duplicate_of"] is None]
    assert len(evaluated) == 3
    pruned = [t for t in evaluated if t.state == optuna.trial.TrialState.PRUNED]
    judged = [t for t in evaluated if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(pruned) + len(judged) == 3 and pruned
    assert {t.user_attrs[decisions.RECORD]["verdict"] for t in pruned} == {decisions.PRUNED_FLOOR}
    assert all(upper < 1.0 for t in pruned for upper in t.intermediate_values.values())
    for t in judged:
        record = t.user_attrs[decisions.RECORD]
        assert (
            record["verdict"] == decisions.INFEASIBLE
            and record["low_run_id"] is None
            and record["full_reused"]
        )
    assert proc.stdout.count("evaluated in full before, no low-fidelity evaluation") == len(judged)
    # Each layer group is quantized as its own precision: more bytes than W4A16 alone.
    sizes = {t.params["layers"]: t.user_attrs[decisions.RECORD]["objective"] for t in evaluated}
    assert sizes["none"] < min(sizes["down_proj_w8"], sizes["attn_w8"])
    with pytest.raises(ValueError):
        study.best_trial  # noqa: B018 - Optuna has no best either


def test_floor_outside_unit_interval_fails_in_one_line_before_any_work(
    tiny_model, task_file, calib_file, tmp_path
):
    proc = run(search_cmd(tiny_model, task_file, calib_file, tmp_path, "search.floor=1.5"))
    assert proc.returncode == 2
    (only,) = proc.stderr.strip().splitlines()
    assert only.startswith("quantsweep: error: search.floor=1.5 is outside [0, 1]")
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Optuna storage, no sweep folder


@pytest.mark.slow
def test_smallest_first_finds_the_grids_best_evaluating_only_what_is_smaller(
    tiny_model, task_file, calib_file, tmp_path
):
    """The exhaustive grid (sampler=grid) first, at a floor everything clears, to learn every accuracy; then
    a floor just above the smallest configuration's accuracy, and smallest-first in the same store.

    W4A16 at group 128 does not divide the tiny model's 192: left out before any work. Both studies judge
    the point estimate at 8 items, no low fidelity, so the second evaluates nothing new (MLflow reuse).
    """
    space = ["scheme=W4A16,W8A8", "scheme.group_size=32,64,128", "search.low_fidelity_limit=null"]
    judge = ["search.floor_on=accuracy", "search.confidence=0.5"]
    grid = run(
        search_cmd(
            tiny_model, task_file, calib_file, tmp_path, *space, *judge, "search.floor=0.0",
            "search.sampler=grid", "search.study_name=grid", "search.n_trials=10",
        )
    )  # fmt: skip
    assert grid.returncode == 0, grid.stderr[-3000:]
    measured = [
        TrialRecord(**t.user_attrs[decisions.RECORD])
        for t in load(tmp_path, "grid").trials
        if t.user_attrs[decisions.RECORD]["verdict"] != decisions.FAILED
        and t.user_attrs[decisions.RECORD]["duplicate_of"] is None
    ]
    assert len(measured) == 3  # W4A16 g32, g64 and W8A8; g128 failed
    by_size = sorted(measured, key=lambda r: r.disk_bytes)
    floor = round(by_size[0].accuracy + 0.01, 4)
    expected = next((r for r in by_size if r.accuracy >= floor), None)

    proc = run(
        search_cmd(
            tiny_model, task_file, calib_file, tmp_path, *space, *judge, f"search.floor={floor}",
            "search.study_name=smallest", "search.n_trials=10",
        )
    )  # fmt: skip
    assert "smallest first: 3 configurations ordered by predicted disk_bytes" in proc.stdout
    assert (
        "1 configurations left out: scheme=W4A16 scheme.group_size=128 (scheme.group_size=128" in proc.stdout
    )
    trials = [TrialRecord(**t.user_attrs[decisions.RECORD]) for t in load(tmp_path, "smallest").trials]
    # Evaluated in ascending size, up to the first feasible one, and nothing evaluated again.
    stop = by_size.index(expected) + 1 if expected else len(by_size)
    assert [t.params for t in trials] == [r.params for r in by_size[:stop]]
    assert all(t.full_reused for t in trials)
    if expected is None:
        assert proc.returncode == EXIT_NO_FEASIBLE, proc.stderr[-3000:]
        assert "every configuration that can be built has been tried" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (
            "every configuration predicted smaller than the best feasible one has been tried" in proc.stdout
        )
        assert line(proc.stdout, "best: ").startswith(f"best: trial {stop - 1} {describe(expected.params)}:")
    # With a first, cheap evaluation: configurations the grid evaluated in full go straight to it.
    screened = run(
        search_cmd(
            tiny_model, task_file, calib_file, tmp_path, *space[:2], *judge, f"search.floor={floor}",
            "search.study_name=screened", "search.n_trials=10", "search.low_fidelity_limit=4",
        )
    )  # fmt: skip
    assert screened.returncode == proc.returncode, screened.stderr[-3000:]
    again = [TrialRecord(**t.user_attrs[decisions.RECORD]) for t in load(tmp_path, "screened").trials]
    assert [t.params for t in again] == [t.params for t in trials]
    assert all(t.low_run_id is None and t.full_reused for t in again)
    assert screened.stdout.count("evaluated in full before, no low-fidelity evaluation") == len(trials)
    assert "evaluations: 0 at 4 items" in screened.stdout


@pytest.mark.slow
def test_refused_settings_cost_no_job_and_no_budget(tiny_model, task_file, calib_file, tmp_path):
    """scheme × sparsity × algorithm on the grid: of 8 cells, 4 cannot go together (by hand: dense without a
    sparsity twice, dense with GPTQ, GPTQ after 2:4). A budget of 4 evaluates the 4 that can, in whatever
    order the grid draws; a refused draw launches no job, logs no run and spends no budget."""
    refused = [
        {"scheme": "dense", "sparsity": "none", "scheme.algorithm": "RTN"},
        {"scheme": "dense", "sparsity": "none", "scheme.algorithm": "GPTQ"},
        {"scheme": "dense", "sparsity": "2of4", "scheme.algorithm": "GPTQ"},
        {"scheme": "W4A16", "sparsity": "2of4", "scheme.algorithm": "GPTQ"},
    ]
    cmd = [
        *base_overrides(tiny_model, task_file, calib_file, tmp_path),
        "sweep=search_smallest",
        "calibration=default",  # the test's own file (the sweep calibrates on HellaSwag)
        "scheme=dense,W4A16",
        "sparsity=none,2of4",
        "scheme.algorithm=RTN,GPTQ",
        "scheme.group_size=64",
        "ignore=lm_head",
        "layers=none",
        "eval.limit=8",
        "eval.num_fewshot=0",
        f"search.storage=sqlite:///{tmp_path}/optuna.db",
        "search.study_name=levers",
        "search.low_fidelity_limit=null",
        "search.sampler=grid",
        "search.floor_on=accuracy",
        "search.floor=0.0",
        "search.n_trials=4",
    ]
    proc = run([sys.executable, "run.py", "-m", *cmd, f"hydra.sweep.dir={tmp_path}/multirun"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "quantsweep: 4 configurations refused before any work" in proc.stdout

    trials = [TrialRecord(**t.user_attrs[decisions.RECORD]) for t in load(tmp_path, "levers").trials]
    drawn = [t for t in trials if t.verdict == decisions.REFUSED]
    evaluated = [t for t in trials if t.verdict != decisions.REFUSED]
    assert drawn, "the grid's seeded order drew every buildable cell first: nothing refused was exercised"
    assert all(t.params in refused and t.error for t in drawn)
    assert sorted(map(describe, (t.params for t in evaluated))) == sorted(
        describe({"scheme": sc, "sparsity": sp, "scheme.algorithm": a})
        for sc, sp, a in [("dense", "2of4", "RTN"), ("W4A16", "none", "RTN"), ("W4A16", "none", "GPTQ"),
                          ("W4A16", "2of4", "RTN")]
    )  # fmt: skip
    verdicts = (decisions.FEASIBLE, decisions.INFEASIBLE)
    assert all(t.stage == "full" and t.verdict in verdicts for t in evaluated), [t.error for t in evaluated]
    points = point_runs(tmp_path)
    assert len(points) == 4 and all(p.info.status == "FINISHED" for p in points)
    # One job per evaluated trial, none for a refused one (Hydra numbers each job's folder).
    assert len([d for d in (tmp_path / "multirun").iterdir() if d.name.isdigit()]) == 4
    assert f"{len(drawn)} refused before any work" in proc.stdout


def test_hydras_plugin_scan_finds_both_sweepers_without_importing_their_work():
    """Hydra imports every `hydra_plugins` module at each start: ours must not pull in torch or optuna."""
    code = (
        "import json, sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "found = [f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)]\n"
        f"print(json.dumps([sorted(found), sorted(set({HEAVY!r}) & set(sys.modules))]))\n"
    )
    proc = run([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweepers, heavy = json.loads(proc.stdout)
    assert [s for s in sweepers if s.startswith("hydra_plugins.quantsweep_sweepers")] == [
        "hydra_plugins.quantsweep_sweepers.GridSweeper",
        "hydra_plugins.quantsweep_sweepers.OptunaSweeper",
    ]
    assert heavy == []
