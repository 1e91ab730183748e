#!/usr/bin/env bash
# One command on a GPU node, in the Python environment that is already there (nothing is
# downloaded): runs the GPU check under a wall-clock cap, most valuable phases first (the
# bf16 step at 224, 192, 160 px, the checkpoint, the frozen forward; the loader phases only
# where ffcv imports, from offline/ when present). The device file in OUTDIR is rewritten
# after every phase and marked partial until the last, so a run cut short still leaves its numbers.
# At the cap (default 8 minutes: one lent session's 10-minute command) the check's whole
# process tree is stopped, then killed, torchrun and its workers included (they run in a
# session of their own, out of reach of a process-group kill).
#
#   bash bench/gpu_node.sh OUTDIR [--minutes M | --seconds S] [gpu_check arguments ...]
#   PYTHON=/opt/torch/.venv/bin/python3 bash bench/gpu_node.sh out --minutes 7
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: bash bench/gpu_node.sh OUTDIR [--minutes M | --seconds S] [gpu_check args]" >&2; exit 2; fi
OUT="$1"; shift
CAP=$((8 * 60))
if [ "${1:-}" = "--minutes" ]; then CAP=$(($2 * 60)); shift 2
elif [ "${1:-}" = "--seconds" ]; then CAP="$2"; shift 2; fi
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
tree_pids() {  # $1 and every process below it, from one snapshot of the process table
  ps -e -o pid= -o ppid= | awk -v root="$1" '{ parent[$1] = $2 }
    END { n = 1; list[1] = root; print root
          for (i = 1; i <= n; i++) for (p in parent) if (parent[p] == list[i]) { list[++n] = p; print p } }'
}
kill_tree() {  # stop the tree until no new process appears (none forks or is re-parented away), then kill it
  local all=" " p again=1
  while [ "$again" = 1 ]; do
    again=0
    for p in $(tree_pids "$1"); do
      case "$all" in *" $p "*) ;; *) all="$all$p "; kill -STOP "$p" 2>/dev/null || true; again=1 ;; esac
    done
  done
  # shellcheck disable=SC2086
  kill -KILL $all 2>/dev/null || true
}
set +e
"$PY" -m bench.gpu_check --out "$OUT" "$@" > >(tee "$OUT/gpu_check.log") 2>&1 &
pid=$!
start=$SECONDS
cut=0
while kill -0 "$pid" 2>/dev/null; do
  if [ $((SECONDS - start)) -ge "$CAP" ]; then kill_tree "$pid"; cut=1; break; fi
  sleep 1
done
wait "$pid"
status=$?
wait  # tee's last lines
set -e
if [ "$cut" = 1 ]; then
  status=124
  echo "gpu_check cut at $CAP s (its process tree killed): the device file in $OUT holds the phases measured (partial)" | tee -a "$OUT/gpu_check.log"
fi
ls -l "$OUT"
exit "$status"
