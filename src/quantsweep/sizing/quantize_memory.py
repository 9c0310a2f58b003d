"""GPU memory to quantize a model with llm-compressor 0.14, from its config alone (dense Llama-style models).

What llm-compressor holds on the GPU, read from its code (pipelines/sequential, modifiers/gptq):

- The calibration data pass through the *sequential* pipeline one subgraph at a time: the embeddings (with
  what precedes the first decoder layer), then each decoder layer (the last with the final norm and lm_head,
  whose output is computed on the meta device). Between subgraphs the hidden states of every sample are kept
  in an intermediates cache on the CPU (`sequential_offload_device="cpu"`), and one sample at a time
  (batch size 1) is moved to the GPU.
- GPTQ accumulates, per quantized Linear of the current layer, a float32 Hessian of in_features² elements,
  and quantizes the layer at its end, batching Linears of the same shape; its working memory per Linear is
  llm-compressor's own estimate (`gptq.helpers.max_batch_size`): 4 bytes × max(in² + 3·out·in +
  4·out·128, 3·in² + 2·out·in) (the second with activation ordering, W4A16's default). The Hessians of a
  layer are freed when it is quantized.
- Where the model lives decides the rest. Loaded on the GPU, all its weights are there throughout. Loaded on
  the CPU (`quantize.max_gpu_memory_gib`), llm-compressor onloads one subgraph's weights for its passes and
  drops them after; RTN's data-free pipeline onloads one Linear at a time.

Estimates, in bytes (b = bytes per element of the model's dtype, T = calibration.max_seq_length, N =
calibration.num_samples):

    layer weights   = b × (Σ out·in over the layer's Linears + 2·hidden)   (two RMSNorms)
    Hessians        = 4 × Σ in² over the layer's Linears
    GPTQ work       = max over same-shape groups of (Linears in the group × the per-Linear estimate above)
    activations     = T·b·(4·hidden + 2·heads·head_dim + 2·kv_heads·head_dim + 3·intermediate)
                      + T²·(heads·(3·b + 4) + b)    (eager attention scores: two in b, the fp32 softmax, its
                      cast; the causal mask) + 8·T·max in_features   (GPTQ's fp32 copies of a Linear's input)
    RTN, model on GPU    = model + 4 × largest Linear   (one float32 working copy while it is quantized)
    RTN, onloaded        = (b + 4) × largest Linear
    GPTQ, model on GPU   = model + Hessians + GPTQ work + activations
    GPTQ, sequential     = max(layer weights + Hessians + GPTQ work + activations, embeddings + T·hidden·b)
    sequential floor     = layer weights + Hessians + activations    (what one layer surely holds at once:
                           a cap below it is refused before any work)
    CPU cache            = N × (T·hidden·b + T²·b + 2·T·head_dim·b)   (hidden states, causal mask, rotary)

Not modelled: the CUDA context and allocator fragmentation (outside torch's max_memory_allocated, which is
what these are compared with), a quantized lm_head (ignored by default), AWQ's cached activations, and
mixture-of-experts models (refused, as in `formulas.estimate_num_parameters`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from quantsweep.sizing.formulas import ModelShape, text_config
from quantsweep.tables import GIB

# llm-compressor's GPTQ: float32 Hessians and working copies, columns quantized 128 at a time.
GPTQ_BYTES = 4
GPTQ_BLOCK = 128
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


@dataclass(frozen=True)
class DecoderShape:
    """A dense Llama-style decoder's sizes, as config.json gives them."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    num_parameters: int
    dtype_bytes: int

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> DecoderShape:
        """From a config.json-style dict (bf16 unless it says otherwise: quantsweep loads `dtype="auto"`)."""
        # Layers, KV heads, head_dim and the parameter estimate as sizing reads them everywhere (it names
        # every missing field and refuses mixture-of-experts models).
        base = ModelShape.from_hf_config(config)
        cfg = text_config(config)
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16").removeprefix("torch.")
        return cls(
            hidden=int(cfg["hidden_size"]),
            intermediate=int(cfg["intermediate_size"]),
            heads=int(cfg["num_attention_heads"]),
            kv_heads=base.num_kv_heads,
            head_dim=base.head_dim,
            layers=base.num_layers,
            vocab=int(cfg["vocab_size"]),
            num_parameters=int(base.num_parameters),
            dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
        )

    def linears(self) -> list[tuple[int, int]]:
        """(out_features, in_features) of one decoder layer's Linears: q, k, v, o, gate, up, down."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]

    @property
    def layer_params(self) -> int:
        return sum(out * inp for out, inp in self.linears()) + 2 * self.hidden


def hessian_bytes(linears: list[tuple[int, int]]) -> int:
    """GPTQ's float32 Hessians of one layer: in_features² per Linear."""
    return sum(GPTQ_BYTES * inp * inp for _, inp in linears)


def gptq_work_per_linear(out: int, inp: int) -> int:
    """llm-compressor's estimate of quantizing one Linear (stacked Hessian and weight copies, the block
    matrices; or, with activation ordering, the Hessian's permuted copies)."""
    quantization = inp * inp + 3 * out * inp + 4 * out * GPTQ_BLOCK
    actorder = 3 * inp * inp + 2 * out * inp
    return GPTQ_BYTES * max(quantization, actorder)


def gptq_work_bytes(linears: list[tuple[int, int]]) -> int:
    """The largest batch's working memory: Linears of one shape are quantized together."""
    groups = Counter(linears)
    return max(count * gptq_work_per_linear(out, inp) for (out, inp), count in groups.items())


def activation_bytes(shape: DecoderShape, seq_len: int) -> int:
    """One calibration sample (batch size 1) through one decoder layer, eager attention (see the module)."""
    b, t = shape.dtype_bytes, seq_len
    per_token = (
        4 * shape.hidden + 2 * (shape.heads + shape.kv_heads) * shape.head_dim + 3 * shape.intermediate
    )
    attention = t * t * (shape.heads * (3 * b + 4) + b)
    hessian_inputs = 2 * GPTQ_BYTES * t * max(inp for _, inp in shape.linears())
    return t * b * per_token + attention + hessian_inputs


@dataclass(frozen=True)
class QuantizeMemory:
    """Bytes each way of quantizing needs (the module docstring gives each formula)."""

    model: int
    layer_weights: int
    hessians: int
    gptq_work: int
    activations: int
    rtn_whole: int
    rtn_onloaded: int
    gptq_whole: int
    gptq_sequential: int
    sequential_floor: int
    cpu_cache: int

    def peak(self, gptq: bool, onloaded: bool) -> int:
        """The figure for one way: GPTQ-family or not, model on the GPU or onloaded from the CPU."""
        if gptq:
            return self.gptq_sequential if onloaded else self.gptq_whole
        return self.rtn_onloaded if onloaded else self.rtn_whole

    def floor(self, gptq: bool, calibrated: bool) -> int:
        """Below this a cap cannot work: one layer's weights with its Hessians and one sample's activations
        (data-calibrated), else the largest Linear with its working copy (RTN, data-free)."""
        if not calibrated:
            return self.rtn_onloaded
        return self.sequential_floor if gptq else self.layer_weights + self.activations


def quantize_memory(shape: DecoderShape, num_samples: int, seq_len: int) -> QuantizeMemory:
    """Every estimate for `num_samples` calibration samples of `seq_len` tokens."""
    b = shape.dtype_bytes
    linears = shape.linears()
    model = shape.num_parameters * b
    layer = shape.layer_params * b
    hessians = hessian_bytes(linears)
    work = gptq_work_bytes(linears)
    acts = activation_bytes(shape, seq_len)
    largest = max(out * inp for out, inp in linears)
    head = (shape.vocab + seq_len) * shape.hidden * b
    cache = num_samples * b * seq_len * (shape.hidden + seq_len + 2 * shape.head_dim)
    return QuantizeMemory(
        model=model,
        layer_weights=layer,
        hessians=hessians,
        gptq_work=work,
        activations=acts,
        rtn_whole=model + GPTQ_BYTES * largest,
        rtn_onloaded=(b + GPTQ_BYTES) * largest,
        gptq_whole=model + hessians + work + acts,
        gptq_sequential=max(layer + hessians + work + acts, head),
        sequential_floor=layer + hessians + acts,
        cpu_cache=cache,
    )


def format_section(memory: QuantizeMemory, num_samples: int, seq_len: int) -> str:
    """The sizing CLI's "memory to quantize" lines, GiB."""

    def gib(value: int) -> str:
        return f"{value / GIB:.2f}"

    rows = [
        ("RTN, model on the GPU", memory.rtn_whole),
        ("RTN, onloaded one Linear at a time", memory.rtn_onloaded),
        ("GPTQ, model on the GPU", memory.gptq_whole),
        ("GPTQ, sequential onloading (quantize.max_gpu_memory_gib)", memory.gptq_sequential),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"GPU memory to quantize (GiB; calibration {num_samples} samples x {seq_len} tokens):"]
    lines += [f"  {name.ljust(width)}  {gib(value):>7}" for name, value in rows]
    lines += [
        f"  GPTQ per layer: weights {gib(memory.layer_weights)} + Hessians {gib(memory.hessians)} "
        f"+ GPTQ work {gib(memory.gptq_work)} + activations {gib(memory.activations)}",
        f"  (a GPTQ cap below {gib(memory.sequential_floor)}, weights + Hessians + activations, is refused)",
        f"  CPU: the calibration cache {gib(memory.cpu_cache)} (both ways), plus the whole model "
        f"{gib(memory.model)} when onloading",
        "Rules: quantsweep/sizing/quantize_memory.py (torch's max_memory_allocated: no CUDA context)",
    ]
    return "\n".join(lines)


def section(config: dict[str, Any], num_samples: int, seq_len: int) -> str:
    """`format_section` for a config.json-style dict, or one line saying why there is no estimate."""
    if num_samples < 1 or seq_len < 1:
        raise ValueError(f"calib_samples={num_samples} and calib_seq_len={seq_len} must both be at least 1")
    try:
        shape = DecoderShape.from_hf_config(config)
    except (ValueError, KeyError) as exc:
        return f"GPU memory to quantize: no estimate for this model ({exc})"
    return format_section(quantize_memory(shape, num_samples, seq_len), num_samples, seq_len)
