"""What "smallest" means: each objective on measured metrics and on a predicted checkpoint size."""

from __future__ import annotations

import pytest

from quantsweep.config import SearchConfig
from quantsweep.sweeps.search.objectives import OBJECTIVES, Sizes

GIB = 2**30
# Weights only: the deployment's settings change nothing.
ON_80, ON_120, ON_40 = (SearchConfig(gpu_mem_gb=g) for g in (80, 120, 40))


def test_measured_objectives():
    metrics = {"disk_bytes": 5e9, "weights_vram_est_gib": 100.0, "kv_cache_bytes_per_token": 1.0}
    assert OBJECTIVES["disk_bytes"].measured(metrics, ON_80) == 5e9
    assert OBJECTIVES["weights_vram"].measured(metrics, ON_80) == 100 * GIB
    assert OBJECTIVES["gpus"].measured(metrics, ON_80) == 2  # 107.4 GB on 80 GB cards
    assert OBJECTIVES["gpus"].measured(metrics, ON_120) == 1


def test_predicted_objectives_apply_the_weights_overhead_to_vram():
    sizes = Sizes.predicted(60 * GIB, 1.0, None)
    assert OBJECTIVES["disk_bytes"].value(sizes, ON_80) == 60 * GIB
    assert OBJECTIVES["weights_vram"].value(sizes, ON_80) == pytest.approx(72 * GIB)  # 1.2 x 60 GiB
    # 72 GiB = 77.3 GB: one 80 GB card, two 40 GB ones.
    assert OBJECTIVES["gpus"].value(sizes, ON_80) == 1
    assert OBJECTIVES["gpus"].value(sizes, ON_40) == 2


def test_deployment_adds_the_kv_cache_at_the_context_and_concurrency():
    # 40 GiB of weights' vRAM; 160 KiB of KV per token (Granite 3.2 8B in bf16) x 32,768 tokens x 8
    # sequences = 40 GiB: 80 GiB in all, 85.9 GB, two 80 GB cards.
    metrics = {"disk_bytes": 1.0, "weights_vram_est_gib": 40.0, "kv_cache_bytes_per_token": 160 * 1024}
    s = SearchConfig(context=32_768, concurrency=8)
    assert OBJECTIVES["deployment"].measured(metrics, s) == 80 * GIB
    assert OBJECTIVES["deployment_gpus"].measured(metrics, s) == 2
    # Null context: the model's own (8,192 here, logged as max_context): 10 GiB of KV.
    own = SearchConfig(concurrency=8)
    assert OBJECTIVES["deployment"].measured(metrics | {"max_context": 8192}, own) == 50 * GIB
    with pytest.raises(ValueError, match="search.context"):
        OBJECTIVES["deployment"].measured(metrics, own)


def test_objective_text_and_what_settings_each_reads():
    assert OBJECTIVES["disk_bytes"].text(1.5 * GIB) == "1.5000 GiB"
    assert OBJECTIVES["gpus"].text(2.0) == "2 GPU"
    assert OBJECTIVES["weights_vram"].text(None) == "-"
    assert {name: o.uses for name, o in OBJECTIVES.items() if o.uses} == {
        "gpus": ("gpu_mem_gb",),
        "deployment": ("context", "concurrency"),
        "deployment_gpus": ("gpu_mem_gb", "context", "concurrency"),
    }
