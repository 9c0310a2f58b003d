"""GPTQ W4A16 of the Llama-3.1-8B shape on one GPU, with the model on the GPU and under
`quantize.max_gpu_memory_gib` (issue 16): seconds and peak GPU memory of each, beside the sizing prediction.

On the GPU host, from the project root (about 5 minutes on an H200):

    . .gpu/install.sh && python bench/capped_gptq.py --out $OUT

A CPU dry run of the same code path (tiny shape; the cap then limits nothing):

    .venv/bin/python bench/capped_gptq.py --shape tiny --device cpu --out /tmp/capped_gptq

The model has random bf16 weights of the shape (bench/sweep_vs_seed.py builds it and its BPE tokenizer;
time and memory do not depend on the values). Calibration is kept small so both runs fit the host's time:
64 samples x 512 tokens (llm-compressor's examples use 512 x 2048), each sample ten HellaSwag items joined.
Both runs go through quantsweep.quantize.quantize, in this one process, one after the other; each peak is
torch.cuda.max_memory_allocated over the whole quantize step (load, oneshot, save), summed over the cards.
Writes capped_gptq-<shape>.json to --out.
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_vs_seed as svs  # noqa: E402

SHAPES = {
    **svs.SHAPES,
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048),
}  # fmt: skip
DEFAULT_DATA = (
    next((p for p in (svs.ROOT / ".gpu/data", svs.ROOT.parent / "shared/data") if p.is_dir()), svs.ROOT)
    / "hellaswag_val_full.txt.bz2"
)
ITEMS_PER_SAMPLE = 10  # HellaSwag items are ~60 tokens: ten of them fill a 512-token sample


def calibration_file(data: Path, seq_len: int) -> Path:
    """One sample per line: ITEMS_PER_SAMPLE items of the six-line HellaSwag text layout joined."""
    path = svs.WORK / f"calibration-{seq_len}.txt"
    with bz2.open(data, "rt") as f:
        lines = [line.strip() for line in f if line.strip()]
    per_sample = 6 * ITEMS_PER_SAMPLE * max(1, seq_len // 512)
    samples = [" ".join(lines[i : i + per_sample]) for i in range(0, len(lines) - per_sample, per_sample)]
    path.write_text("\n".join(samples) + "\n")
    return path


def _token_counts(model: Path, cal: Any) -> dict[str, int]:
    """What the calibration samples hold after truncation: the smallest and the total, in tokens."""
    from transformers import AutoTokenizer

    from quantsweep import calibration

    lengths = [len(ids) for ids in calibration.load(cal, AutoTokenizer.from_pretrained(model))["input_ids"]]
    return {"min": min(lengths), "total": sum(lengths)}


def run(name: str, model: Path, cal: Any, cap: float | None, predicted: int) -> dict[str, Any]:
    from quantsweep import recipes
    from quantsweep.config import SchemeConfig
    from quantsweep.quantize import quantize
    from quantsweep.tables import GIB

    scheme = SchemeConfig(name="W4A16_GPTQ", preset="W4A16", algorithm="GPTQ")
    recipe = recipes.build_recipe(scheme, ["lm_head"])
    print(f"{name}: quantizing (max_gpu_memory_gib={cap})", flush=True)
    q = quantize(str(model), recipe, svs.WORK / f"ckpt-{name}", cal, seed=0, max_gpu_memory_gib=cap)
    peak = None if q.peak_memory_bytes is None else q.peak_memory_bytes / GIB
    max_card = None if q.peak_memory_max_card_bytes is None else q.peak_memory_max_card_bytes / GIB
    result = {
        "max_gpu_memory_gib": cap,
        "seconds_load": q.seconds_load,
        "seconds_calibration_data": q.seconds_calibration_data,
        "seconds_quantize": q.seconds_quantize,
        "seconds_save": q.seconds_save,
        "quant_peak_gpu_gib": peak,
        "quant_peak_max_card_gib": max_card,
        "predicted_peak_gib": predicted / GIB,
        "peak_over_predicted": None if peak is None else peak * GIB / predicted,
        "within_cap": None if peak is None or cap is None else peak <= cap,
    }
    print(
        f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float)), flush=True
    )
    return result


def same_checkpoints(a: Path, b: Path) -> dict[str, Any]:
    """The two checkpoints' quantization configs, and one layer's packed weights and scales, compared."""
    from safetensors import safe_open

    configs = [json.loads((p / "config.json").read_text())["quantization_config"] for p in (a, b)]
    name = "model.layers.0.mlp.down_proj.weight_packed"

    def tensors(path: Path) -> dict[str, Any]:
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                if name in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    return {k: f.get_tensor(k) for k in (name, name.replace("_packed", "_scale"))}
        return {}

    ta, tb = tensors(a), tensors(b)
    equal = bool(ta) and all((ta[k] == tb[k]).all().item() for k in ta)
    scale = name.replace("_packed", "_scale")
    diff = (ta[scale].float() - tb[scale].float()).abs().max().item() if ta and tb else None
    return {
        "same_quantization_config": configs[0] == configs[1],
        "layer0_down_proj_equal": equal,
        "layer0_down_proj_scale_max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--cap", type=float, default=10.0, help="quantize.max_gpu_memory_gib of the capped run"
    )
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")))
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = (
            ""  # before torch initialises CUDA: quantsweep then sees a CPU host
        )
    import torch

    from quantsweep.config import CalibrationConfig
    from quantsweep.devices import device_name
    from quantsweep.sizing.quantize_memory import DecoderShape, quantize_memory
    from quantsweep.tables import GIB

    svs.SHAPES.update(SHAPES)
    args.out.mkdir(parents=True, exist_ok=True)
    svs.WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = svs.build(args.shape, args.data)
    built = time.perf_counter() - start
    text = calibration_file(args.data, args.seq_len)
    cal = CalibrationConfig(
        name="bench", dataset=str(text), layout="text", num_samples=args.samples, max_seq_length=args.seq_len
    )
    shape = DecoderShape.from_hf_config(SHAPES[args.shape] | {"dtype": "bfloat16"})
    memory = quantize_memory(shape, args.samples, args.seq_len)
    total = torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else None
    report: dict[str, Any] = {
        "bench": "bench/capped_gptq.py",
        "date": time.strftime("%F"),
        "device": device_name(),
        "card_total_gib": total,
        "shape": args.shape,
        "config": SHAPES[args.shape],
        "scheme": "W4A16 GPTQ, lm_head ignored",
        "calibration": {
            "samples": args.samples,
            "seq_len": args.seq_len,
            "tokens": _token_counts(model, cal),
        },
        "build_s": built,
        "prediction_gib": {k: v / GIB for k, v in vars(memory).items()},
        "runs": {},
    }
    path = args.out / f"capped_gptq-{args.shape}.json"
    for name, cap, predicted in (
        ("uncapped", None, memory.gptq_whole),
        ("capped", args.cap, memory.gptq_sequential),
    ):
        try:
            report["runs"][name] = run(name, model, cal, cap, predicted)
        except Exception as exc:  # one run's failure (an OOM under the cap is a finding) leaves the other's
            report["runs"][name] = {"max_gpu_memory_gib": cap, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{name}: {report['runs'][name]['error'][:300]}", flush=True)
        path.write_text(json.dumps(report, indent=1))
    if all("error" not in r for r in report["runs"].values()):
        report["checkpoints"] = same_checkpoints(svs.WORK / "ckpt-uncapped", svs.WORK / "ckpt-capped")
    report["total_s"] = time.perf_counter() - start
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path} after {report['total_s']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
