#!/usr/bin/env bash
# Test-only PyTorch environment for tests/torch_reference/ (FID port check,
# AutoAttack check, TRADES / MART / fast-AT check against ART's trainers).
#
# Creates, once, a separate venv at .ci/torch-venv with CPU-usable torch,
# torchvision, pytorch-fid, torchattacks and ART
# (adversarial-robustness-toolbox). It never installs into the main
# environment: advjax itself must not depend on torch. Safe to run again (it
# only checks; an existing venv only gets what it lacks).
# Prints the venv's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$PWD/.ci/torch-venv"
PY="$VENV/bin/python"
TORCH_SPEC="${ADVJAX_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
TORCHATTACKS_SPEC="torchattacks==3.5.1"
# ART and what its imports need, without its pins (they would replace torch
# and numpy).
ART_SPEC="adversarial-robustness-toolbox==1.20.1 six tqdm scikit-learn joblib threadpoolctl cloudpickle narwhals packaging"
export PIP_DISABLE_PIP_VERSION_CHECK=1

check() {
  [ -x "$PY" ] && "$PY" - <<'PY' >/dev/null 2>&1
import numpy, torch, torchvision, pytorch_fid.inception, torchattacks
from art.defences.trainer import AdversarialTrainerTRADESPyTorch, AdversarialTrainerFBFPyTorch
PY
}

if check; then
  echo "torch test env already present" >&2
  echo "$VENV"
  exit 0
fi

start=$(date +%s)
python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip >&2 || true
# shellcheck disable=SC2086
"$PY" -m pip install -q $TORCH_SPEC numpy pillow scipy >&2
# pytorch-fid's and torchattacks' own pins would drag in other torch builds:
# take them alone (torchattacks needs only torch, numpy and scipy here).
"$PY" -m pip install -q --no-deps pytorch-fid "$TORCHATTACKS_SPEC" >&2
# shellcheck disable=SC2086
"$PY" -m pip install -q --no-deps $ART_SPEC >&2
if ! check; then
  echo "error: $VENV was built but cannot import torch/torchvision/pytorch_fid/torchattacks/art" >&2
  exit 1
fi
echo "torch test env built in $(( $(date +%s) - start )) s" >&2
echo "$VENV"
