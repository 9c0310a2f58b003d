"""quantsweep: quantize LLMs with llm-compressor, evaluate with lm-eval, track in MLflow, sweep with Hydra."""

__version__ = "0.1.0"
