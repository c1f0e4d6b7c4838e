#!/usr/bin/env bash
# Download (here, with network) the wheels the GPU machine lacks into .whl/ (git-ignored locally),
# for scripts/gpu_check.sh. The GPU image already has torch, numpy, pyyaml, tensorboard, pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
py=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps -d .whl)
# DeepSpeed ships as an sdist: build a pure-Python wheel (ops JIT-compile on first use).
.venv/bin/python -m pip wheel --no-deps --no-build-isolation -w .whl "deepspeed==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
# DeepSpeed's own needs that the image lacks (its image has timm, msgpack, ninja, py-cpuinfo, psutil).
for pkg in hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
  python3 -m pip download "${py[@]}" "${plat[@]}" "$pkg" || python3 -m pip download --no-deps -d .whl "$pkg"
done
ls -la .whl
