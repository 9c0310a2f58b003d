"""Fixtures: a tiny Llama with random weights, a small HellaSwag-layout task file and calibration text,
all made here, and a composer for real Hydra configs pointed at a temporary MLflow store."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "quantsweep" / "conf"
SHARED_HELLASWAG = ROOT.parent / "shared" / "data" / "hellaswag_val_full.txt.bz2"
WORDS = [
    "the",
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "child",
    "runs",
    "walks",
    "sits",
    "eats",
    "jumps",
    "on",
    "in",
    "under",
    "over",
    "house",
    "tree",
    "car",
    "road",
    "ball",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "quickly",
    "slowly",
    "and",
    "then",
    "he",
    "she",
    "it",
    "is",
    "was",
    "to",
    "of",
    "with",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_tiny_llama(
    path: Path, hidden: int = 192, layers: int = 2, seed: int = 0, tie: bool = False
) -> Path:
    """A 2-layer Llama whose hidden size (192) is not a multiple of 128, like SmolLM2's 576."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_hellaswag_jsonl(path: Path, items: int = 12, seed: int = 0) -> Path:
    """Items in the original HellaSwag JSONL layout, with the fields lm-eval's hellaswag reads."""
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(items):
            doc = {
                "activity_label": "Walking the dog",
                "ctx_a": sentence(rng, 8),
                "ctx_b": sentence(rng, 3),
                "endings": [sentence(rng, 5) for _ in range(4)],
                "label": str(rng.randrange(4)),
            }
            out.write(json.dumps(doc) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hellaswag_jsonl(tmp_path_factory.mktemp("data") / "hellaswag.jsonl")


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(sentence(rng, 40) for _ in range(32)) + "\n")
    return path


def base_overrides(model: Path, task: Path, calib: Path, work: Path) -> list[str]:
    return [
        "model=custom",
        f"model.source={model}",
        f"eval.data_path={task}",
        "eval.limit=6",
        "eval.num_fewshot=1",
        f"calibration.dataset={calib}",
        "calibration.num_samples=8",
        "calibration.max_seq_length=64",
        f"tracking.uri=sqlite:///{work}/mlruns/mlflow.db",
        f"tracking.artifact_location={work}/mlruns/artifacts",
        f"output_dir={work}/checkpoints",
        f"cache_dir={work}/cache",
        # vLLM probes take minutes each: tests that check deployability turn it on.
        "deploy_check=false",
    ]


def compose(overrides: list[str]):
    """A real Hydra composition of conf/ (schema-checked), as run.py gets it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import quantsweep.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


@pytest.fixture
def make_cfg(tiny_model: Path, task_file: Path, calib_file: Path, tmp_path: Path) -> Callable:
    """compose(...) over the tiny model, task and calibration file, with a store in this test's tmp dir."""

    def make(*overrides: str, work: Path | None = None):
        base = base_overrides(tiny_model, task_file, calib_file, work or tmp_path)
        return compose([*base, *overrides])

    return make
