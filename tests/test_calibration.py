"""Calibration data: HellaSwag in any layout eval=hellaswag_file reads, and a checkpoint key that only
moves when what is read moves."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

from conftest import compose, write_hellaswag_jsonl
from transformers import AutoTokenizer

from quantsweep import calibration
from quantsweep.evaluation import hellaswag_file


def _six_line_bz2(jsonl: Path) -> Path:
    """The same items in llama.cpp's six-line layout, compressed."""
    lines = []
    for line in jsonl.read_text().splitlines():
        doc = json.loads(line)
        context = doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        lines += [context, doc["label"], *doc["endings"]]
    target = jsonl.with_suffix(".txt.bz2")
    target.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    return target


def _cfg(dataset: Path, *overrides: str):
    return compose(["calibration=hellaswag_file", f"calibration.dataset={dataset}", *overrides]).calibration


def test_hellaswag_calibration_reads_jsonl_and_six_line_files_alike(tiny_model, tmp_path):
    jsonl = write_hellaswag_jsonl(tmp_path / "hs.jsonl", items=10)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    settings = ("calibration.skip=4", "calibration.num_samples=100", "calibration.max_seq_length=64")
    from_jsonl = calibration.load(_cfg(jsonl, *settings), tokenizer)
    from_bz2 = calibration.load(_cfg(_six_line_bz2(jsonl), *settings), tokenizer)
    items = list(hellaswag_file.read_items(jsonl))[4:]
    assert len(from_jsonl) == len(items) == 6
    assert sorted(map(tuple, from_jsonl["input_ids"])) == sorted(map(tuple, from_bz2["input_ids"]))
    golds = {tuple(tokenizer(i["query"] + " " + i["choices"][i["label"]])["input_ids"]) for i in items}
    assert set(map(tuple, from_jsonl["input_ids"])) == golds


def test_the_layout_enters_the_checkpoint_key_only_where_it_changes_what_is_read(tmp_path):
    bz = tmp_path / "hs.txt.bz2"
    bz.write_bytes(b"")
    jsonl = tmp_path / "hs.jsonl"
    # A .bz2 is read as HellaSwag either way: checkpoints made before calibration.layout keep their key.
    assert calibration.identity(_cfg(bz)) == calibration.identity(_cfg(bz, "calibration.layout=auto"))
    assert "layout" not in calibration.identity(_cfg(bz))
    # A .jsonl read as HellaSwag is other data than its `text` field: another key.
    assert calibration.identity(_cfg(jsonl)) != calibration.identity(_cfg(jsonl, "calibration.layout=auto"))
