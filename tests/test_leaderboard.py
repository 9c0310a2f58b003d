"""Leaderboards from a real MLflow SQLite store filled by the real pipeline on two tiny Llamas: what
`collect` reads, what `export` writes, the plot, the footnotes and the CLI. Ranking rules on hand-made frames
are in test_rank.py."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from itertools import combinations, groupby
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from quantsweep import pipeline, tracking
from quantsweep.results import cli, collect, export, log_to_run, plots, rank, render, sweep_run

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
    return collect(store.uri, EXPERIMENT)


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
    card = 100_000  # bytes: GPU GB are decimal
    df = collect(store.uri, EXPERIMENT, gpu_mem_gb=tiny_gpu)
    client = mlflow.MlflowClient(store.uri)
    for run_id, gpus in zip(df["run_id"], df["gpus_needed"], strict=True):
        # the weights estimate is the stored bytes plus 20 % serving overhead, as each run logged them
        vram = client.get_run(run_id).data.metrics["disk_bytes"] * 1.2
        assert (gpus - 1) * card < vram <= gpus * card, run_id  # the fewest cards that hold it
    assert df["gpus_needed"].max() > 1
    assert (df["gpu_mem_gb"] == tiny_gpu).all()


def _front_by_staircase(rows: list[tuple[str, float, float]]) -> set[str]:
    """The Pareto set found another way: walk sizes upward; at each size the most accurate rows are on
    the front when they beat everything strictly smaller, the rest of that size are dominated by them."""
    front, best_so_far = set(), -math.inf
    for _, same_size in groupby(sorted(rows, key=lambda r: r[1]), key=lambda r: r[1]):
        same = list(same_size)
        top = max(acc for _, _, acc in same)
        if top > best_so_far:
            front |= {run for run, _, acc in same if acc == top}
        best_so_far = max(best_so_far, top)
    return front


def test_pareto_flag_is_non_domination_within_each_model(store, board):
    client = mlflow.MlflowClient(store.uri)
    for model, rows in board.groupby("model"):
        logged = [
            (r, *(client.get_run(r).data.metrics[k] for k in ("disk_gib", "accuracy")))
            for r in rows["run_id"]
        ]
        assert set(rows.loc[rows["pareto"], "run_id"]) == _front_by_staircase(logged), model
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


def test_failed_runs_appear_only_when_asked(store, board):
    assert store.failed.run_id not in set(board["run_id"])
    df = collect(store.uri, EXPERIMENT, include_failed=True)
    row = df.set_index("run_id").loc[store.failed.run_id]
    assert row["status"] == "FAILED" and not row["pareto"] and row["tied_with"] == []
    assert len(df) == len(board) + 1


def test_filters_narrow_the_rows(store, board):
    swept = collect(store.uri, EXPERIMENT, sweep_id=SWEEP)
    base = baseline_id(store, store.swept[0].run_id)
    assert set(swept["run_id"]) == {o.run_id for o in store.swept} | {base}
    assert set(swept.loc[swept["role"] == "point", "sweep_id"]) == {SWEEP}

    only_b = collect(store.uri, EXPERIMENT, model="tiny_b")
    assert set(only_b["model"]) == {"tiny_b"} and len(only_b) == 2
    assert set(only_b["run_id"]) == set(board.loc[board["model"] == "tiny_b", "run_id"])

    tagged = collect(store.uri, EXPERIMENT, tags={tracking.SWEEP_ID: SWEEP})
    assert set(tagged["run_id"]) == set(swept["run_id"])
    bases = collect(store.uri, EXPERIMENT, tags={tracking.ROLE: "baseline"})
    assert set(bases["role"]) == {"baseline"} and len(bases) == 2

    with pytest.raises(ValueError, match="no runs .* match sweep=nope"):
        collect(store.uri, EXPERIMENT, sweep_id="nope")
    with pytest.raises(ValueError, match="experiment 'missing' not found"):
        collect(store.uri, "missing")


@pytest.fixture(scope="module")
def exported(board, tmp_path_factory) -> dict[str, Path]:
    return export(board, tmp_path_factory.mktemp("export"))


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


def _recovery_note(md: str) -> str:
    (note,) = [line for line in md.splitlines() if line.startswith("- recovery = ")]
    return note


def test_recovery_note_names_the_method_the_runs_logged(store, board, exported):
    client = mlflow.MlflowClient(store.uri)
    points = board.loc[board["role"] == "point", "run_id"]
    assert {client.get_run(r).data.tags[tracking.RECOVERY_STDERR] for r in points} == {"paired"}
    note = _recovery_note(exported["md"].read_text())
    assert "delta-method stderr of mean(q)/mean(b) over the items both runs scored" in note
    assert f"{tracking.RECOVERY_STDERR}=paired" in note
    assert "independent" not in note and "both stderrs propagated" not in note


def test_recovery_note_says_which_rows_used_which_method(store):
    """Runs without per-item scores are tagged independent: the note names their rows, and the others'."""
    client = mlflow.MlflowClient(store.uri)
    alone = store.alone.run_id
    logged = client.get_run(alone).data.tags[tracking.RECOVERY_STDERR]
    client.set_tag(alone, tracking.RECOVERY_STDERR, "independent")
    try:
        df = collect(store.uri, EXPERIMENT)
    finally:
        client.set_tag(alone, tracking.RECOVERY_STDERR, logged)
    number = {run: f"#{i + 1}" for i, run in enumerate(df["run_id"])}
    note = _recovery_note(render.to_markdown(df))
    said = {}
    for part in note.split(f"{tracking.RECOVERY_STDERR}: ", 1)[1].split("; "):
        method, rest = part.split(" on ", 1)
        said[method] = set(rest.split(" (", 1)[0].split(", "))
    assert said == {"independent": {number[alone]}, "paired": {number[o.run_id] for o in store.swept}}
    assert "first order" in note and "delta-method" in note


def test_recovery_note_on_frames_without_pairing():
    def frame(methods: list[str | None]) -> pd.DataFrame:
        roles = ["baseline" if m is None else "point" for m in methods]
        runs = [f"r{i}" for i in range(len(methods))]
        return pd.DataFrame({"run_id": runs, "role": roles, "recovery_stderr_method": methods})

    independent = render.recovery_note(frame([None, "independent", "independent"]))
    assert f"{tracking.RECOVERY_STDERR}=independent" in independent and "first order" in independent
    assert "paired" not in independent and "delta-method" not in independent
    assert render.recovery_note(frame([None])) == "recovery = accuracy / baseline accuracy"  # no ± shown


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
    written = export(board, tmp_path, formats=("csv",), gpu_mem_gb=1e-4, floor=0.0)
    assert set(written) == {"csv", "png", "svg"} and not (tmp_path / "leaderboard.md").exists()
    csv = pd.read_csv(written["csv"])
    assert (csv["gpus_needed"] > 1).any() and (csv["gpu_mem_gb"] == 1e-4).all()
    assert (
        csv.loc[csv["role"] == "point", "passed"].all()
        and (csv.loc[csv["role"] == "point", "floor"] == 0).all()
    )
    strict = rank.with_floor(board, 1.0)
    points = strict[strict["role"] == "point"]
    # a floor of 100 % recovery passes exactly the points that score at least their baseline
    assert list(points["passed"]) == list(points["accuracy"] >= points["baseline_accuracy"])
    with pytest.raises(ValueError, match="formats pdf unknown"):
        export(board, tmp_path, formats=("pdf",))


def test_log_to_run_attaches_the_files(store, exported):
    paths = log_to_run(store.parent, exported["csv"].parent, store.uri)
    listed = {a.path for a in mlflow.MlflowClient(store.uri).list_artifacts(store.parent, "leaderboard")}
    assert listed == set(paths) == {f"leaderboard/{p.name}" for p in exported.values()}


def test_cli_prints_the_table_writes_and_logs(store, tmp_path, capsys):
    out = tmp_path / "lb"
    argv = [f"tracking_uri={store.uri}", f"sweep={SWEEP}", f"out={out}", "formats=md,json", "log=true"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| # |") and f"md: {out / 'leaderboard.md'}" in printed
    assert {p.name for p in out.iterdir()} == {
        "leaderboard.md",
        "leaderboard.json",
        "accuracy_vs_size.png",
        "accuracy_vs_size.svg",
    }
    assert len(json.loads((out / "leaderboard.json").read_text())) == 4  # 3 sweep points + their baseline
    assert sweep_run(store.uri, EXPERIMENT, SWEEP) == store.parent
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
    with pytest.raises(SystemExit) as exit_:
        cli.main([f"tracking_uri={store.uri}", f"out={tmp_path}", *args])
    assert exit_.value.code == 2
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


def test_each_fingerprint_is_shown_once_the_newest_finished(make_cfg, tmp_path):
    """A `force=true` rerun leaves two FINISHED runs of one fingerprint; the leaderboard lists the newer."""
    first = pipeline.run(make_cfg("scheme=W8A8"))
    again = pipeline.run(make_cfg("scheme=W8A8", "force=true"))
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    points = mlflow.MlflowClient(uri).search_runs(
        [mlflow.get_experiment_by_name("quantsweep").experiment_id],
        filter_string=f"tags.`{tracking.ROLE}` = 'point' and attributes.status = 'FINISHED'",
    )
    assert {r.info.run_id for r in points} == {first.run_id, again.run_id}  # the store holds both
    board = collect(uri, "quantsweep")
    assert list(board.loc[board["role"] == "point", "run_id"]) == [again.run_id]
