"""What "smallest" means: each objective on measured metrics and on a predicted checkpoint size."""

from __future__ import annotations

import pytest

from quantsweep.sweeps.search.objectives import OBJECTIVES

GIB = 2**30


def test_measured_objectives():
    metrics = {"disk_bytes": 5e9, "weights_vram_est_gib": 100.0}
    assert OBJECTIVES["disk_bytes"].measured(metrics, 80) == 5e9
    assert OBJECTIVES["weights_vram"].measured(metrics, 80) == 100 * GIB
    assert OBJECTIVES["gpus"].measured(metrics, 80) == 2  # 107.4 GB on 80 GB cards
    assert OBJECTIVES["gpus"].measured(metrics, 120) == 1


def test_predicted_objectives_apply_the_weights_overhead_to_vram():
    disk = 60 * GIB
    assert OBJECTIVES["disk_bytes"].predicted(disk, 80) == disk
    assert OBJECTIVES["weights_vram"].predicted(disk, 80) == pytest.approx(72 * GIB)  # 1.2 x 60 GiB
    # 72 GiB = 77.3 GB: one 80 GB card, two 40 GB ones.
    assert OBJECTIVES["gpus"].predicted(disk, 80) == 1
    assert OBJECTIVES["gpus"].predicted(disk, 40) == 2


def test_objective_text():
    assert OBJECTIVES["disk_bytes"].text(1.5 * GIB) == "1.5000 GiB"
    assert OBJECTIVES["gpus"].text(2.0) == "2 GPU"
    assert OBJECTIVES["weights_vram"].text(None) == "-"
    assert [name for name, o in OBJECTIVES.items() if o.per_gpu] == ["gpus"]
