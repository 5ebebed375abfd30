#!/usr/bin/env bash
# Installs the peer implementations that `python -m bench` compares against.
#
#   bash bench/setup_peers.sh            # both parts below
#   bash bench/setup_peers.sh --system   # only the peers that live beside the project's torch
#   bash bench/setup_peers.sh --venv     # only the TorchRL virtual environment
#
# 1. In the current interpreter (the one that runs the project), pinned so that pip can never
#    replace the installed torch (a constraints file holds torch at its installed version):
#      cpprb 11.0.0, tianshou 2.0.1 (--no-deps plus its light deps: its `virtualenv`
#      requirement would downgrade filelock and is not needed by tianshou.data), flashbax 0.1.3
#      with CPU JAX.
# 2. TorchRL in its own virtual environment ($PEERS_VENV, default .venv-peers/, git-ignored by
#    `.venv*/`). TorchRL's compiled extension (torchrl/_torchrl*.so, home of its C++ sum/min
#    segment trees) only loads under the torch release it was built against. torchrl 0.14.1's
#    extension needs two symbols that torch 2.13 lacks (torch::autograd::_wrap_outputs with the
#    new signature, fire_node_creation_hooks) and resolves every symbol against torch 2.14.1.
#    The harness runs the TorchRL measurement with this venv's python in a subprocess
#    (bench/peers/runner.py).
#    Only PyPI is reachable from the development machines and PyPI's Linux torch is the CUDA
#    build: torch 2.14.1 + its nvidia-*/cuda-toolkit wheels (about 3-4 GB on disk). It runs on a
#    CPU-only machine. The CPU-only index (download.pytorch.org/whl/cpu) is tried first and
#    used when it answers. Set PEERS_ALLOW_CUDA_TORCH=0 to refuse the CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${PEERS_VENV:-.venv-peers}
TORCHRL_VERSION=${TORCHRL_VERSION:-0.14.1}
TENSORDICT_VERSION=${TENSORDICT_VERSION:-0.14.3}
TORCHRL_TORCH=${TORCHRL_TORCH:-2.14.1}
ALLOW_CUDA_TORCH=${PEERS_ALLOW_CUDA_TORCH:-1}
CPU_INDEX=https://download.pytorch.org/whl/cpu

do_system=1
do_venv=1
case "${1:-}" in
  --system) do_venv=0 ;;
  --venv) do_system=0 ;;
  "") ;;
  *) echo "usage: $0 [--system|--venv]" >&2; exit 2 ;;
esac

log() { echo "[setup_peers] $*" >&2; }

if [[ $do_system == 1 ]]; then
  sys_torch=$("$PY" -c 'import torch; print(torch.__version__)')
  cons=$(mktemp)
  trap 'rm -f "$cons"' EXIT
  echo "torch==${sys_torch}" >"$cons"
  log "system interpreter $("$PY" -c 'import sys; print(sys.executable)') with torch ${sys_torch} (held fixed)"
  "$PY" -m pip install -q -c "$cons" \
    "cpprb==11.0.0" \
    "deepdiff>=7.0.1,<8" "h5py>=3.9,<4" matplotlib "numba>=0.60" "overrides>=7.4,<8" \
    "pandas>=2,<3" "pettingzoo>=1.22,<2" "sensai-utils>=1.6" "tensorboard>=2.5,<3" tqdm \
    "gymnasium>=0.28" \
    || log "WARNING: some system peers failed to install (they will be reported as skipped)"
  "$PY" -m pip install -q -c "$cons" --no-deps "tianshou==2.0.1" \
    || log "WARNING: tianshou failed to install (reported as skipped)"
  "$PY" -m pip install -q -c "$cons" "flashbax==0.1.3" "jax[cpu]==0.10.2" \
    || log "WARNING: flashbax/jax failed to install (reported as skipped)"
  after=$("$PY" -c 'import torch; print(torch.__version__)')
  if [[ "$after" != "$sys_torch" ]]; then
    log "ERROR: torch changed from ${sys_torch} to ${after}"; exit 1
  fi
  "$PY" - <<'EOF'
import importlib.metadata as md
for d in ("torch", "numpy", "cpprb", "tianshou", "numba", "jax", "jaxlib", "flashbax"):
    try:
        print(f"[setup_peers]   {d}=={md.version(d)}")
    except md.PackageNotFoundError:
        print(f"[setup_peers]   {d}: not installed")
EOF
fi

if [[ $do_venv == 1 ]]; then
  vpy="$VENV/bin/python"
  check='import torch, torchrl, tensordict, torchrl._torchrl; print(torch.__version__, torchrl.__version__, tensordict.__version__)'
  if [[ -x "$vpy" ]] && "$vpy" -c "$check" >/dev/null 2>&1 \
     && [[ "$("$vpy" -c 'import torchrl; print(torchrl.__version__)')" == "$TORCHRL_VERSION" ]]; then
    log "$VENV already has: $("$vpy" -c "$check" 2>/dev/null)"
    exit 0
  fi
  log "creating $VENV for torchrl ${TORCHRL_VERSION} (torch ${TORCHRL_TORCH})"
  "$PY" -m venv "$VENV"
  "$vpy" -m pip install -q --upgrade "setuptools>=77.0.3" wheel
  # --isolated: the pip config's extra/local indexes must not answer for the CPU index.
  if timeout 30 "$vpy" -m pip --isolated download -q --no-deps -d "$(mktemp -d)" \
       --index-url "$CPU_INDEX" "torch==${TORCHRL_TORCH}" >/dev/null 2>&1; then
    log "CPU-only torch index reachable: installing torch ${TORCHRL_TORCH}+cpu"
    "$vpy" -m pip --isolated install -q --index-url "$CPU_INDEX" "torch==${TORCHRL_TORCH}"
  elif [[ "$ALLOW_CUDA_TORCH" == 1 ]]; then
    log "CPU-only torch index not reachable; installing PyPI's torch ${TORCHRL_TORCH}" \
        "(CUDA build with nvidia-* wheels, several GB; runs on CPU)"
    "$vpy" -m pip install -q "torch==${TORCHRL_TORCH}"
  else
    log "CPU-only torch index not reachable and PEERS_ALLOW_CUDA_TORCH=0: TorchRL will be skipped"
    exit 0
  fi
  "$vpy" -m pip install -q "torch==${TORCHRL_TORCH}" "torchrl==${TORCHRL_VERSION}" \
    "tensordict==${TENSORDICT_VERSION}" numpy
  log "$VENV: $("$vpy" -c "$check")"
fi
