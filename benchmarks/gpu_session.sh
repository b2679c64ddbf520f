#!/usr/bin/env bash
# One GPU session's checks for the GPU work (docs/gpu.md), in order of value, about 11 minutes in all so that a
# 15-minute lease has room for the machine's start. Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh                  # results in $OUT (or ./gpu-session): one file per step
#   STEPS="tests variants" bash benchmarks/gpu_session.sh   # some steps (one call of the device tool runs at
#   STEPS="generate profile" bash benchmarks/gpu_session.sh # most 10 minutes: two calls, the machine kept warm)
#   DRY=1 PY=.venv/bin/python bash benchmarks/gpu_session.sh   # the same steps at toy sizes on a CPU
#
# Optional folders beside the code (ignored by git, brought along by whoever runs it):
#   .whl/      wheels the machine lacks (pydantic and its parts, pytest, gguf), installed into /tmp/site
#   .nanogpt/  a checkout of karpathy/nanoGPT, the peer bench_gpu.py measures against
# Each step has its own time limit; a step that fails or runs out leaves its output and the next one runs.
set -u
PY=${PY:-python3}
out=${OUT:-gpu-session}
mkdir -p "$out"
if [ -d .whl ] && [ -z "${DRY:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
dry=()
[ -n "${DRY:-}" ] && dry=(--dry-run)
nanogpt=()
[ -d .nanogpt ] && nanogpt=(--nanogpt .nanogpt)

step() {  # step NAME SECONDS COMMAND...: run it under its limit, its output in $out/NAME.txt (a benchmark's own
    local name=$1 limit=$2 began=$SECONDS  # files in $out/NAME/), a line in summary.txt. 7 files come back in all.
    shift 2
    case " ${STEPS:-tests variants generate profile} " in *" $name "*) ;; *) return ;; esac
    mkdir -p "$out/$name"
    OUT="$out/$name" timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "$name: exit $? after $((SECONDS - began)) s" | tee -a "$out/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >>"$out/summary.txt"
# 1. the CUDA-only tests: captured decoding, pinned prefetch and the deferred guard, the int4 kernel (~1 min)
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_int4.py \
    -k "cuda or read_nothing"
# 2. the training levers not yet measured on a GPU, each a row beside nanoGPT's (~5 min)
step variants 330 "$PY" benchmarks/bench_gpu.py "${nanogpt[@]}" --variants --rounds 1 --skip generate --no-write \
    "${dry[@]}"
# 3. generation at batch 1 and 8, float32 and bf16, with the weight-int4 column (~2 min)
step generate 180 "$PY" benchmarks/bench_gpu.py --skip train --no-write "${dry[@]}"
# 4. where the compiled training step spends its time beside nanoGPT's (~2 min)
step profile 150 "$PY" benchmarks/profile_gpu.py "${nanogpt[@]}" --skip decode --skip trainer "${dry[@]}"
rm -f "$out/profile/profile_gpu.txt"  # the same text as profile.txt
rmdir "$out"/* 2>/dev/null
true
