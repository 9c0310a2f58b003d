"""What MLflow 3's UI reads from quantsweep's experiment: the experiment kind tag (classic runs, not GenAI)
and a saved runs-table view that shows the key metrics, on a new store and on one made before setup added
them."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from quantsweep import tracking
from quantsweep.config import TrackingConfig


def config(tmp_path: Path) -> TrackingConfig:
    return TrackingConfig(
        uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db", artifact_location=str(tmp_path / "artifacts")
    )


def tags(experiment_id: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_experiment(experiment_id).tags


def test_new_experiment_is_classic_kind_with_key_metrics_view(tmp_path):
    experiment_id = tracking.setup(config(tmp_path))
    found = tags(experiment_id)
    assert found["mlflow.experimentKind"] == "custom_model_development"
    # The envelope the UI's saved-views parser accepts: string name, number createdAt, string state.
    view = json.loads(found["mlflow.sharedViewState.quantsweep"])
    assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert state["selectedColumns"] == [
        "metrics.`accuracy`",
        "metrics.`recovery`",
        "metrics.`disk_gib`",
        "metrics.`bits_per_weight`",
        "metrics.`passed`",
    ]
    assert state["columnOrder"][-5:] == state["selectedColumns"]  # shown in that order, after the run's name


def test_existing_experiment_without_the_tags_gets_them_once(tmp_path):
    cfg = config(tmp_path)
    mlflow.set_tracking_uri(cfg.uri)
    old = mlflow.create_experiment(cfg.experiment)  # as a store made before setup tagged experiments
    assert "mlflow.experimentKind" not in tags(old)
    assert tracking.setup(cfg) == old
    first = tags(old)
    assert first["mlflow.experimentKind"] == "custom_model_development"
    assert tracking.setup(cfg) == old
    assert tags(old) == first  # idempotent: the view keeps its creation time


def test_a_kind_chosen_in_the_ui_is_left_alone(tmp_path):
    cfg = config(tmp_path)
    experiment_id = tracking.setup(cfg)
    mlflow.MlflowClient().set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    tracking.setup(cfg)
    assert tags(experiment_id)["mlflow.experimentKind"] == "genai_development"
