"""The local HellaSwag reader: both layouts give lm-eval's hellaswag items."""

from __future__ import annotations

import bz2
import json

import pytest
from conftest import SHARED_HELLASWAG

from quantsweep.errors import ConfigError
from quantsweep.evaluation import hellaswag_file


def test_jsonl_layout_is_processed_like_lm_eval(tmp_path):
    doc = {
        "activity_label": "Baking",
        "ctx_a": "A man mixes flour.",
        "ctx_b": "then he",
        "endings": ["adds eggs [step] slowly.", "sleeps.", "runs.", "sings."],
        "label": "0",
    }
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(doc) + "\n")
    (item,) = hellaswag_file.read_items(path)
    assert item == {
        "query": "Baking: A man mixes flour. Then he",
        "choices": ["adds eggs slowly.", "sleeps.", "runs.", "sings."],
        "label": 0,
    }


def test_six_line_layout_plain_and_bz2(tmp_path):
    text = "Baking: A man mixes flour. then he\n2\nadds eggs.\nsleeps.\nruns.\nsings.\n"
    plain, packed = tmp_path / "h.txt", tmp_path / "h.txt.bz2"
    plain.write_text(text)
    packed.write_bytes(bz2.compress(text.encode()))
    items = list(hellaswag_file.read_items(plain))
    assert items == list(hellaswag_file.read_items(packed))
    assert items[0]["label"] == 2 and items[0]["choices"][0] == "adds eggs."


def test_truncated_six_line_file_is_rejected(tmp_path):
    path = tmp_path / "h.txt"
    path.write_text("ctx\n1\na\nb\nc\n")
    with pytest.raises(ConfigError, match="not a multiple of 6"):
        list(hellaswag_file.read_items(path))


def test_prepare_caches_by_content(tmp_path, task_file):
    first = hellaswag_file.prepare(task_file, tmp_path)
    assert first == hellaswag_file.prepare(task_file, tmp_path)
    assert len(first.read_text().splitlines()) == 12


@pytest.mark.skipif(not SHARED_HELLASWAG.exists(), reason="../shared/data is not beside this checkout")
def test_the_shared_validation_file_has_every_item():
    items = list(hellaswag_file.read_items(SHARED_HELLASWAG))
    assert len(items) == 10042 and all(len(i["choices"]) == 4 and 0 <= i["label"] < 4 for i in items)


def test_the_shipped_task_asks_each_items_query_with_its_four_endings(tmp_path, task_file):
    """lm-eval's hellaswag request per choice: the item's query as context, " " + ending as continuation,
    the label as the gold index (the shipped YAML reads these fields directly, without templates)."""
    from quantsweep.config import EvalConfig
    from quantsweep.evaluation.harness import include_dir, task_manager

    cfg = EvalConfig(name="h", tasks=["hellaswag_file"], data_path=str(task_file), num_fewshot=0)
    task = task_manager(cfg, include_dir(cfg, tmp_path)).load(["hellaswag_file"])["tasks"]["hellaswag_file"]
    task.set_config("num_fewshot", 0)
    task.build_all_requests(limit=5)
    items = list(hellaswag_file.read_items(task_file))[:5]
    asked = {(i.doc_id, i.idx): i.arguments for i in task.instances}
    assert asked == {
        (d, c): (item["query"], " " + ending)
        for d, item in enumerate(items)
        for c, ending in enumerate(item["choices"])
    }
    assert [task.doc_to_target(i.doc) for i in task.instances[::4]] == [item["label"] for item in items]
