"""The seed's manual workflow, one point: the lab's quantize.py pattern (load, oneshot, save), nothing else.

    python bench/seed_quantize.py MODEL_DIR OUT_DIR --scheme W4A16 [--gptq] [--calibration FILE]

Evaluation is then lm-eval's CLI, run separately for the baseline and for OUT_DIR (see sweep_vs_seed.py).
"""

from __future__ import annotations

import argparse
import bz2

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from transformers import AutoModelForCausalLM, AutoTokenizer


def calibration_texts(path: str, n: int) -> list[str]:
    """HellaSwag six-line items past the evaluated ones: context + gold ending."""
    with bz2.open(path, "rt") as f:
        lines = f.read().splitlines()
    items = [lines[i : i + 6] for i in range(0, len(lines) - 5, 6)][5000 : 5000 + n]
    return [item[0] + " " + item[2 + int(item[1])] for item in items]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--gptq", action="store_true")
    parser.add_argument("--calibration")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto", device_map=device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    modifier = GPTQModifier if args.gptq else QuantizationModifier
    recipe = modifier(targets="Linear", scheme=args.scheme, ignore=["lm_head"])
    data = {}
    if args.calibration:
        texts = calibration_texts(args.calibration, args.samples)
        ds = Dataset.from_dict({"text": texts}).map(
            lambda b: tokenizer(b["text"], max_length=512, truncation=True),
            batched=True,
            remove_columns=["text"],
        )
        data = {"dataset": ds, "num_calibration_samples": args.samples, "max_seq_length": 512}
    torch.manual_seed(0)
    oneshot(model=model, recipe=recipe, **data)
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
