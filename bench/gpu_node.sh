#!/usr/bin/env bash
# One command on a GPU node, in the Python environment that is already there (nothing is
# downloaded): runs the GPU check under a wall-clock cap, most valuable phases first (the
# bf16 step at 224, 192, 160 px, the checkpoint, the frozen forward; the loader phases only
# where ffcv imports, from offline/ when present). The device file in OUTDIR is rewritten
# after every phase and marked partial until the last, so a run cut short still leaves its numbers.
#
#   bash bench/gpu_node.sh OUTDIR [--minutes M] [gpu_check arguments ...]
#   PYTHON=/opt/torch/.venv/bin/python3 bash bench/gpu_node.sh out --minutes 9
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: bash bench/gpu_node.sh OUTDIR [--minutes M] [gpu_check args]" >&2; exit 2; fi
OUT="$1"; shift
MINUTES=9
if [ "${1:-}" = "--minutes" ]; then MINUTES="$2"; shift 2; fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
# offline/ (make offline-bundle: ffcv and its pure-Python requirements as files) goes on
# PYTHONPATH after any entries already there, ahead of site-packages. FFCV_BT_OFFLINE names another.
OFFLINE="${FFCV_BT_OFFLINE:-$REPO/offline}"
if [ -d "$OFFLINE/ffcv" ]; then
  OFFLINE="$(cd "$OFFLINE" && pwd)"
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$OFFLINE"
  echo "offline bundle on PYTHONPATH: $OFFLINE"
fi
echo "python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)')"
# the check and its torchrun workers in one process group: the cap kills all of them
set +e
timeout --kill-after=20 "$((MINUTES * 60))" setsid "$PY" -m bench.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "gpu_check cut at $MINUTES min: the device file in $OUT holds the phases measured (partial)" | tee -a "$OUT/gpu_check.log"
fi
ls -l "$OUT"
exit "$status"
