#!/usr/bin/env bash
# The GPU session of issue #11 in two device calls on one warm machine (prepared here by
# .device/prepare.sh; each call carries at most 64 MiB, so the 93 MB model travels in halves):
#   run(".device/run.sh 1", carry=[".whl", ".device/weights-a", ".device/weights.sha256"], timeout_s=300)
#     installs ovq, runs the kernel and memory tests compiled on CUDA, benchmarks the kernels
#   run(".device/run.sh 2", carry=[".whl", ".device/weights-b", ".device/weights.sha256"], timeout_s=540)
#     at once after (the machine goes back after 30 s idle): joins the model, tunes its memory reading
#     for TUNE_SECONDS with a checkpoint every 10 steps under $OUT/tune (fetch it back into runs/)
# Everything lands in $OUT: device.txt, tests.log, kernels.json, tune.log, tune/.
# Dry run on a CPU (tiny: interpreter kernels, 2 tune steps of 1,536 tokens):
#   DRY_RUN=1 OUT=/tmp/dry .device/run.sh 1 && DRY_RUN=1 OUT=/tmp/dry .device/run.sh 2
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: .device/run.sh 1|2}
OUT=${OUT:-/tmp/ovq-device-out}
WEIGHTS=/tmp/ovq-weights
SITE=/tmp/ovq-site
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$OUT" "$WEIGHTS"
dry=${DRY_RUN:-}
if [ -z "$dry" ] && [ ! -d "$SITE/ovq" ]; then  # the image's python3 holds torch and triton
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . || exit 1
fi
[ -z "$dry" ] && export PYTHONPATH="$SITE"
python3 - > "$OUT/device.txt" <<'PY'
import torch, triton
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
print(f"device {name}; torch {torch.__version__}; triton {triton.__version__}")
PY

if [ "$stage" = 1 ]; then
  cp .device/weights-a "$WEIGHTS/a" || exit 1
  device=cuda repeats=20
  [ -n "$dry" ] && device=cpu repeats=1
  python3 -m pytest -q -p no:cacheprovider tests/kernels tests/memory 2>&1 | tee "$OUT/tests.log" | tail -n 15
  python3 -m ovq.kernels.bench --device "$device" --repeats "$repeats" > "$OUT/kernels.json" 2>&1
  cat "$OUT/device.txt" "$OUT/kernels.json"
elif [ "$stage" = 2 ]; then
  if [ ! -f "$WEIGHTS/a" ]; then
    echo "the first half of the model is not on this machine: run stage 1 first, on the same warm machine"
    exit 1
  fi
  gguf="$WEIGHTS/SmolLM2-135M-Instruct.Q4_1.gguf"  # the wheel's file name: the tune records it as smollm2
  cat "$WEIGHTS/a" .device/weights-b > "$gguf"
  [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$(cat .device/weights.sha256)" ] || { echo "model halves do not join"; exit 1; }
  if [ -n "$dry" ]; then
    args=(--steps 2 --batch-size 1 --seq-len 1536 --checkpoint-every 1)
  else  # 8 recall dialogues of 4,096 tokens a step (a quarter 8,192); the time limit decides how many steps
    args=(--steps 1000 --batch-size 8 --seq-len 4096 --checkpoint-every 10 --time-limit "${TUNE_SECONDS:-420}")
  fi
  # the shipped recall model's recipe (agent/shipped/smollm2-recall/card.md): a rank-8 LoRA on every
  # projection with the memory reading, KL to the base weighted 10x; LORA_RANK=0 tunes the reading alone
  python3 -m ovq train --init "$gguf" --out "$OUT/tune" --lr 0.02 --warmup 5 --log "$OUT/tune.log" \
    --lora-rank "${LORA_RANK:-8}" --lora-lr 1e-3 --kl-weight "${KL_WEIGHT:-10}" "${args[@]}" 2>&1 | tail -n 40
  cat "$OUT/tune/tune_state.json" | head -3
else
  echo "usage: .device/run.sh 1|2"; exit 2
fi
