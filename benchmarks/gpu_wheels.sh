#!/usr/bin/env bash
# Download, here, the wheels that a GPU machine without a package registry lacks to run the
# notebooks (papermill and its kernel, cvxpy and its solvers, ART, nbconvert, Dask), for its Python
# 3.12 on x86-64, into .whl/ (ignored by git). Packages its image already has (torch, numpy,
# scipy, pandas, matplotlib, scikit-learn, ...; the device tool's KINDS.md lists them) are left
# out, so the folder stays well under the 64 MiB a device call can carry. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WANT="papermill ipykernel nbconvert cvxpy scs==3.2.7 clarabel adversarial-robustness-toolbox dask[distributed]"
# scs 3.2.7: 10 MB; 3.3 ships a 43 MB wheel that alone would fill most of a call's carry.
# On the GPU image already (KINDS.md, 2026-11-17); never carried.
HAVE="attrs certifi charset-normalizer click contourpy cycler filelock fonttools fsspec idna jinja2
joblib kiwisolver markupsafe matplotlib mpmath narwhals networkx numpy packaging pandas pillow
platformdirs psutil pygments pyparsing python-dateutil pytz pyyaml requests rich scikit-learn
scipy setuptools six sympy tabulate threadpoolctl torch torchvision tqdm triton typing-extensions
tzdata urllib3 wheel markdown-it-py mdurl nvidia-.* cuda-.*"
PLATFORMS=""
for n in 17 24 27 28 31 34 35; do PLATFORMS+=" --platform manylinux_2_${n}_x86_64"; done
PLATFORMS+=" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# shellcheck disable=SC2086  # word lists
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$scratch" $WANT
rm -rf .whl && mkdir .whl
pattern="^($(echo $HAVE | tr ' ' '|'))$"
for wheel in "$scratch"/*.whl; do
    name="$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]_' '[:lower:]-')"
    [[ "$name" =~ $pattern ]] || cp "$wheel" .whl/
done
echo "gpu_wheels.sh: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry it: see docs/gpu.md)"
