#!/usr/bin/env bash
# Here, before a GPU session (issue #11): what .device/run.sh needs on the device machine, which has
# torch, triton, tokenizers, safetensors, msgpack, jinja2, rich, hypothesis and pytest (Python 3.12)
# and reaches no network. Writes (all ignored by git, carried by the device tool):
#   .whl/              wheels of the packages ovq needs that the device image lacks
#   .device/weights-a  the default model's GGUF, first half, and .device/weights-b, the second: one
#   .device/weights-b  call carries at most 64 MiB, the file is 93 MB
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
for pkg in gguf==0.19.0 blake3 lmdb platformdirs; do  # (the image has numpy, pyyaml, xxhash)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg"
done
gguf=$(python3 -c 'from ovq.agent.model.names import pretrained_file; print(pretrained_file("smollm2"))')
half=$(( $(stat -c %s "$gguf") / 2 ))
head -c "$half" "$gguf" > .device/weights-a
tail -c +"$((half + 1))" "$gguf" > .device/weights-b
sha256sum "$gguf" | cut -d' ' -f1 > .device/weights.sha256
ls -la .whl .device
