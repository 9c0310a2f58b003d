"""`python -m quantsweep agree`: per-item agreement of two evaluations (one checkpoint by HF and vLLM, say),
checked against a hand count and the statistics module, on runs in a real MLflow store."""

from __future__ import annotations

import math
import statistics

import mlflow
import pytest

from quantsweep import tracking
from quantsweep.results.agreement import agreements, compare, main

A = {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 1.0}
B = {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0, 5: 1.0, 6: 1.0}  # item 6 only in b: not compared


def test_compare_counts_agreement_and_the_paired_difference():
    n, agree, diff, se = compare(A, B)
    diffs = [B[d] - A[d] for d in range(6)]  # 0, +1, -1, 0, 0, 0
    assert n == 6 and agree == pytest.approx(4 / 6)
    assert diff == pytest.approx(0.0)
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    assert compare({0: 1.0}, {0: 1.0}) is None  # one common item: no stderr


def test_agree_reads_two_runs_items_and_prints_the_table(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    ids = []
    for items in (A, B):
        with mlflow.start_run(experiment_id=experiment) as run:
            tracking.log_items({"hellaswag_file": {"acc": items, "acc_norm": items}})
        ids.append(run.info.run_id)
    found = agreements(*ids)
    assert [(f.task, f.metric, f.items) for f in found] == [
        ("hellaswag_file", "acc", 6),
        ("hellaswag_file", "acc_norm", 6),
    ]
    assert main([f"tracking_uri={uri}", f"a={ids[0]}", f"b={ids[1]}"]) == 0
    out = capsys.readouterr().out
    assert "66.7%" in out and "0.0000 ± 0.2582" in out


def test_agree_refuses_a_missing_run_argument_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["a=abc"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "quantsweep agree: error: give both runs: a=<MLflow run id> b=<MLflow run id>"
    )
