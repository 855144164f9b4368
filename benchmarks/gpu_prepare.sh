#!/bin/sh
# The wheels benchmarks/gpu_check.py needs on a bare CUDA machine that has PyTorch but cannot reach a package
# registry (Python 3.12, x86_64): run this here, carry the folder .whl/ (git-ignored), and start the run there with
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
#   PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_check.py
#
# The versions are the ones this repository is tested with; --no-deps because everything else they need
# (numpy, scipy, tensorboard, matplotlib, einops, tqdm, packaging) is on that machine already.
set -eu
cd "$(dirname "$0")/.."
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl monai==1.6.1 nibabel==5.4.2 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0 pydicom==3.0.2 \
    importlib_resources==7.1.0 faiss-cpu==1.15.1
ls .whl
