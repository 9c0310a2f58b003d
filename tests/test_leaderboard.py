"""Leaderboards from a real MLflow SQLite store filled by the real pipeline on two tiny Llamas."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from quantsweep import leaderboard, leaderboard_cli, pipeline, plots, tracking

SWEEP = "sweep-lb-test"
EXPERIMENT = "quantsweep"
REQUIRED = {
    "model",
    "role",
    "scheme",
    "algorithm",
    "group_size",
    "ignore",
    "disk_gib",
    "compression",
    "bits_per_weight",
    "weights_vram_gib",
    "gpus_needed",
    "accuracy",
    "accuracy_stderr",
    "recovery_pct",
    "recovery_pct_stderr",
    "passed",
    "pareto",
    "tied_with",
    "time_quantize_s",
    "time_eval_s",
    "run_id",
}


@pytest.fixture(scope="module")
def store(tiny_model, task_file, calib_file, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """tiny_a: a sweep of three schemes (parent run role=sweep); tiny_b: one point outside any sweep and
    one that fails after quantizing (its primary metric is not in the task)."""
    from conftest import base_overrides, build_tiny_llama, compose

    work = tmp_path_factory.mktemp("leaderboard")
    tiny_b = build_tiny_llama(work / "tiny-b", hidden=128, seed=1)

    def cfg(model: Path, name: str, *extra: str):
        return compose([*base_overrides(model, task_file, calib_file, work), f"model.name={name}", *extra])

    first = cfg(tiny_model, "tiny_a", "scheme=W8A8")
    client = mlflow.MlflowClient(first.tracking.uri)
    parent = client.create_run(
        tracking.setup(first.tracking), tags={tracking.ROLE: "sweep", tracking.SWEEP_ID: SWEEP}
    ).info.run_id
    grid = (
        ["scheme=W4A16", "scheme.group_size=64"],
        ["scheme=W8A8"],
        ["scheme=W4A16", "scheme.group_size=32"],
    )
    swept = [pipeline.run(cfg(tiny_model, "tiny_a", *extra), parent=parent, sweep_id=SWEEP) for extra in grid]
    client.set_terminated(parent)
    alone = pipeline.run(cfg(tiny_b, "tiny_b", "scheme=W8A8"))
    failed = pipeline.run(cfg(tiny_b, "tiny_b", "scheme=W8A16", "eval.primary_metric=exact_match"))
    assert [o.status for o in [*swept, alone, failed]] == ["FINISHED"] * 4 + ["FAILED"]
    return SimpleNamespace(uri=first.tracking.uri, parent=parent, swept=swept, alone=alone, failed=failed)


@pytest.fixture(scope="module")
def board(store) -> pd.DataFrame:
    return leaderboard.collect(store.uri, EXPERIMENT)


def baseline_id(store, run_id: str) -> str:
    return mlflow.MlflowClient(store.uri).get_run(run_id).data.tags[tracking.BASELINE_RUN]


def test_rows_columns_and_values_come_from_the_runs(store, board):
    assert set(board.columns) >= REQUIRED
    points = [*store.swept, store.alone]
    bases = {baseline_id(store, o.run_id) for o in points}
    # FINISHED runs only: the failed point and the sweep's parent run are not rows
    assert set(board["run_id"]) == {o.run_id for o in points} | bases and len(bases) == 2
    for outcome in points:
        row = board.set_index("run_id").loc[outcome.run_id]
        m = outcome.metrics
        assert row["role"] == "point" and row["disk_gib"] == m["disk_gib"]
        assert row["compression"] == m["compression_ratio"] and row["bits_per_weight"] == m["bits_per_weight"]
        assert row["weights_vram_gib"] == m["weights_vram_est_gib"]
        assert row["accuracy"] == m["accuracy"] and row["accuracy_stderr"] == m["accuracy_stderr"]
        assert row["recovery_pct"] == pytest.approx(100 * m["recovery"])
        assert row["recovery_pct_stderr"] == pytest.approx(100 * m["recovery_stderr"])
        assert bool(row["passed"]) == bool(m["passed"]) and row["floor"] == m["floor"]
        assert row["time_quantize_s"] == m["time_quantize_s"] and row["time_eval_s"] == m["time_eval_s"]
        assert row["scheme"] == outcome.params["scheme.name"]
        assert row["algorithm"] == "RTN" and row["ignore"] == "lm_head"
    groups = board.set_index("run_id")["group_size"]
    assert [groups[o.run_id] for o in store.swept] == ["64", "preset", "32"]


def test_baselines_are_marked_with_full_recovery(store, board):
    bases = board[board["role"] == "baseline"]
    assert sorted(bases["model"]) == ["tiny_a", "tiny_b"]
    assert (bases["recovery_pct"] == 100).all() and (bases["compression"] == 1).all()
    assert bases["passed"].isna().all() and (bases["scheme"] == "baseline").all()
    for _, row in bases.iterrows():
        run = mlflow.MlflowClient(store.uri).get_run(row["run_id"])
        assert run.data.tags[tracking.ROLE] == "baseline"
        assert row["accuracy"] == run.data.metrics["accuracy"]


def test_sorted_by_model_then_size(board):
    assert list(board["model"]) == sorted(board["model"])
    for _, rows in board.groupby("model"):
        assert rows["disk_gib"].is_monotonic_increasing
    assert board["disk_gib"].is_monotonic_increasing is False  # two models, each restarting from small


def test_gpus_needed_uses_the_total_rule_on_the_weights_estimate(store):
    tiny_gpu = 1e-4  # 100 kB cards, so the tiny checkpoints need several
    df = leaderboard.collect(store.uri, EXPERIMENT, gpu_mem_gb=tiny_gpu)
    expected = [math.ceil(gib * 2**30 / (tiny_gpu * 1e9)) for gib in df["weights_vram_gib"]]
    assert list(df["gpus_needed"]) == expected and max(expected) > 1
    assert (df["gpu_mem_gb"] == tiny_gpu).all()


def test_pareto_flag_is_non_domination_within_each_model(board):
    for _, row in board.iterrows():
        others = board[(board["model"] == row["model"]) & (board["run_id"] != row["run_id"])]
        dominated = any(
            o["disk_gib"] <= row["disk_gib"]
            and o["accuracy"] >= row["accuracy"]
            and (o["disk_gib"] < row["disk_gib"] or o["accuracy"] > row["accuracy"])
            for _, o in others.iterrows()
        )
        assert row["pareto"] == (not dominated), row["label"]
    # the smallest row of each model is never dominated on size
    assert board.groupby("model")["pareto"].first().all()


def test_ties_are_pairs_within_combined_stderr(board):
    expected: dict[str, set[str]] = {r: set() for r in board["run_id"]}
    for (_, a), (_, b) in combinations(board.iterrows(), 2):
        combined = math.hypot(a["accuracy_stderr"], b["accuracy_stderr"])
        if a["model"] == b["model"] and abs(a["accuracy"] - b["accuracy"]) < combined:
            expected[a["run_id"]].add(b["run_id"])
            expected[b["run_id"]].add(a["run_id"])
    assert {r: set(t) for r, t in zip(board["run_id"], board["tied_with"], strict=True)} == expected
    assert any(board["tied_with"].map(len))  # 6 items per evaluation: wide errors, ties expected


def _frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["run_id", "baseline_run_id", "status", "disk_gib", "accuracy", "accuracy_stderr"]
    return pd.DataFrame(rows, columns=cols)


def test_pareto_on_a_handmade_frame():
    df = _frame(
        [
            ("small", "b", "FINISHED", 1.0, 0.50, 0.01),
            ("mid", "b", "FINISHED", 2.0, 0.60, 0.01),
            ("mid-twin", "b", "FINISHED", 2.0, 0.60, 0.01),  # equal in both: neither dominates
            ("worse", "b", "FINISHED", 3.0, 0.60, 0.01),  # as accurate as mid, larger: dominated
            ("best", "b", "FINISHED", 4.0, 0.70, 0.01),
            ("failed", "b", "FAILED", 0.5, 0.90, 0.01),  # not finished: neither flagged nor dominating
            ("other-eval", "c", "FINISHED", 5.0, 0.40, 0.01),  # another baseline: compared with nobody
        ]
    )
    flags = dict(zip(df["run_id"], leaderboard.pareto_flags(df), strict=True))
    assert flags == {
        "small": True,
        "mid": True,
        "mid-twin": True,
        "worse": False,
        "best": True,
        "failed": False,
        "other-eval": True,
    }


def test_ties_on_a_handmade_frame():
    # combined stderr of a and b is hypot(0.25, 0) = 0.25 exactly: a difference of 0.25 is not a tie
    df = _frame(
        [
            ("a", "b", "FINISHED", 1.0, 0.5, 0.25),
            ("b", "b", "FINISHED", 2.0, 0.75, 0.0),
            ("c", "b", "FINISHED", 3.0, 0.625, math.nan),  # no stderr: counts as 0
            ("d", "x", "FINISHED", 3.0, 0.5, 0.25),  # same numbers as a, other baseline: not compared
            ("e", "b", "KILLED", 3.0, 0.5, 0.25),
        ]
    )
    tied = dict(zip(df["run_id"], leaderboard.ties(df), strict=True))
    assert tied == {"a": ["c"], "b": [], "c": ["a"], "d": [], "e": []}


def test_failed_runs_appear_only_when_asked(store, board):
    assert store.failed.run_id not in set(board["run_id"])
    df = leaderboard.collect(store.uri, EXPERIMENT, include_failed=True)
    row = df.set_index("run_id").loc[store.failed.run_id]
    assert row["status"] == "FAILED" and not row["pareto"] and row["tied_with"] == []
    assert len(df) == len(board) + 1


def test_filters_narrow_the_rows(store, board):
    swept = leaderboard.collect(store.uri, EXPERIMENT, sweep_id=SWEEP)
    base = baseline_id(store, store.swept[0].run_id)
    assert set(swept["run_id"]) == {o.run_id for o in store.swept} | {base}
    assert set(swept.loc[swept["role"] == "point", "sweep_id"]) == {SWEEP}

    only_b = leaderboard.collect(store.uri, EXPERIMENT, model="tiny_b")
    assert set(only_b["model"]) == {"tiny_b"} and len(only_b) == 2
    assert set(only_b["run_id"]) == set(board.loc[board["model"] == "tiny_b", "run_id"])

    tagged = leaderboard.collect(store.uri, EXPERIMENT, tags={tracking.SWEEP_ID: SWEEP})
    assert set(tagged["run_id"]) == set(swept["run_id"])
    bases = leaderboard.collect(store.uri, EXPERIMENT, tags={tracking.ROLE: "baseline"})
    assert set(bases["role"]) == {"baseline"} and len(bases) == 2

    with pytest.raises(ValueError, match="no runs .* match sweep=nope"):
        leaderboard.collect(store.uri, EXPERIMENT, sweep_id="nope")
    with pytest.raises(ValueError, match="experiment 'missing' not found"):
        leaderboard.collect(store.uri, "missing")


@pytest.fixture(scope="module")
def exported(board, tmp_path_factory) -> dict[str, Path]:
    return leaderboard.export(board, tmp_path_factory.mktemp("export"))


def test_export_writes_files_that_parse_back(board, exported):
    assert set(exported) == {"csv", "md", "html", "json", "png", "svg"}
    csv = pd.read_csv(exported["csv"])
    assert list(csv["run_id"]) == list(board["run_id"])
    assert list(csv["accuracy"]) == pytest.approx(list(board["accuracy"]))
    assert [set(str(t).split()) if isinstance(t, str) else set() for t in csv["tied_with"]] == [
        set(t) for t in board["tied_with"]
    ]
    rows = json.loads(exported["json"].read_text())
    assert [r["run_id"] for r in rows] == list(board["run_id"])
    assert [r["tied_with"] for r in rows] == list(board["tied_with"])
    assert [r["pareto"] for r in rows] == list(board["pareto"])
    assert all(r["passed"] is None for r in rows if r["role"] == "baseline")


def test_markdown_marks_ties_baselines_and_pareto(board, exported):
    md = exported["md"].read_text()
    lines = [line for line in md.splitlines() if line.startswith("| #")]
    assert len(lines) == len(board) + 1  # the header row is "| # |"
    number = {run: f"#{i + 1}" for i, run in enumerate(board["run_id"])}
    for line, (_, row) in zip(lines[1:], board.iterrows(), strict=True):
        assert row["run_id"] in line
        if row["tied_with"]:
            assert "≈ " + ", ".join(number[t] for t in row["tied_with"]) in line
        if row["role"] == "baseline":
            assert "| 100.0% |" in line
        assert ("| ✓ |" in line) == bool(row["pareto"])
    assert "sqrt(se1² + se2²)" in md and "gpus_needed_total" in md


def test_html_is_self_contained_with_the_plot(exported):
    page = exported["html"].read_text()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert "Pareto front" in page and "≈ #" in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("#") for link in links)  # only the SVG's own defs: opens offline
    ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])


def test_plot_files_and_what_they_draw(board, exported):
    assert exported["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ET.parse(exported["svg"])
    fig = plots.figure(board)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["tiny_a", "tiny_b"]
    for ax, (_, rows) in zip(axes, board.groupby("model"), strict=True):
        base = rows.loc[rows["role"] == "baseline", "accuracy"].iloc[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        (floor_label,) = [label for label in lines if label.startswith("floor:")]
        assert "97% recovery" in floor_label
        assert lines[floor_label].get_ydata()[0] == pytest.approx(0.97 * base)
        front = rows[rows["pareto"]].sort_values("disk_gib")
        xs, ys = lines["Pareto front"].get_data()
        assert list(xs[: len(front)]) == list(front["disk_gib"])
        assert list(ys[: len(front)]) == list(front["accuracy"])
        assert len(ax.containers) == 2  # error bars: one set for the baseline, one for the points


def test_export_options_gpu_size_floor_and_formats(board, tmp_path):
    written = leaderboard.export(board, tmp_path, formats=("csv",), gpu_mem_gb=1e-4, floor=0.0)
    assert set(written) == {"csv", "png", "svg"} and not (tmp_path / "leaderboard.md").exists()
    csv = pd.read_csv(written["csv"])
    assert (csv["gpus_needed"] > 1).any() and (csv["gpu_mem_gb"] == 1e-4).all()
    assert (
        csv.loc[csv["role"] == "point", "passed"].all()
        and (csv.loc[csv["role"] == "point", "floor"] == 0).all()
    )
    strict = leaderboard.with_floor(board, 1.0)
    points = strict[strict["role"] == "point"]
    assert list(points["passed"]) == list(points["recovery_pct"] >= 100)
    with pytest.raises(ValueError, match="formats pdf unknown"):
        leaderboard.export(board, tmp_path, formats=("pdf",))


def test_log_to_run_attaches_the_files(store, exported):
    paths = leaderboard.log_to_run(store.parent, exported["csv"].parent, store.uri)
    listed = {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(store.parent, "leaderboard")}
    assert listed == set(paths) == {f"leaderboard/{p.name}" for p in exported.values()}


def test_cli_prints_the_table_writes_and_logs(store, tmp_path, capsys):
    out = tmp_path / "lb"
    argv = [f"tracking_uri={store.uri}", f"sweep={SWEEP}", f"out={out}", "formats=md,json", "log=true"]
    assert leaderboard_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| # |") and f"md: {out / 'leaderboard.md'}" in printed
    assert {p.name for p in out.iterdir()} == {
        "leaderboard.md",
        "leaderboard.json",
        "accuracy_vs_size.png",
        "accuracy_vs_size.svg",
    }
    assert len(json.loads((out / "leaderboard.json").read_text())) == 4  # 3 sweep points + their baseline
    sweep_run = leaderboard.sweep_run(store.uri, EXPERIMENT, SWEEP)
    assert sweep_run == store.parent
    listed = {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(store.parent, "leaderboard")}
    assert "leaderboard/leaderboard.json" in listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["colour=red"], "unknown key 'colour'"),
        (["gpu_mem_gb=lots"], "gpu_mem_gb='lots' is not a number"),
        (["include_failed=maybe"], "include_failed='maybe' is not true or false"),
        (["formats=csv,pdf"], "formats='csv,pdf' is not"),
        (["experiment=nope"], "experiment 'nope' not found"),
        (["model=nobody"], "no runs in experiment 'quantsweep'"),
        (["log=true"], "give sweep=<id> too"),
        (["floor=1.5"], "floor=1.5 is outside [0, 1]"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(store, tmp_path, capsys, args, message):
    assert leaderboard_cli.main([f"tracking_uri={store.uri}", f"out={tmp_path}", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("quantsweep leaderboard: error: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_cli_through_python_m_without_a_store(tmp_path):
    missing = f"sqlite:///{tmp_path}/none/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "quantsweep", "leaderboard", f"tracking_uri={missing}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"quantsweep leaderboard: error: no MLflow store at {missing}: pass " + (
        "tracking_uri=sqlite:///<path to mlflow.db>"
    )
    assert not (tmp_path / "none").exists()  # looking must not create a store
