#!/usr/bin/env bash
# The GPU check, in one go and without network, in under 8 minutes on one H100/H200:
#   1 nvidia-smi -L           2 tests/test_fast.py (the CUDA-graph test runs only on a GPU)
#   3 one real `python3 -m tornado.train gpus=1` run
#   4 the benchmark: our loop against raw PyTorch, live against preaugmented, the paper's Table 3/5 grid
#   5 the benchmark's speed switches, on and off        6 a short summary table, printed last
# Run it from the repository root (the lead's device tool carries .whl/, git-ignored):
#   bash launchers/device_check.sh
# Results and logs go to $OUT (else outputs/device_check/); the synthetic data is built in a temporary folder
# and removed at the end. A stage that fails or runs out of time is reported and the next one still runs;
# CHECK_BUDGET_S (default 450) bounds the whole script.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD:$PWD/launchers
setup_rc=$?
set -o pipefail

OUT=${OUT:-outputs/device_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${CHECK_BUDGET_S:-450}  # seconds since the script started (bash's SECONDS), the install included
DATA=$(mktemp -d /tmp/tornado-check-data.XXXXXX)
trap 'rm -rf "$DATA"' EXIT
STATUS="$OUT/stages.tsv"
printf 'stage\tstatus\tseconds\n' >"$STATUS"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

left() { echo $((BUDGET - SECONDS)); }

# stage NAME CAP_SECONDS COMMAND...: runs COMMAND under a time limit of min(CAP, time left - RESERVE),
# logs to $OUT/NAME.log and records ok / failed (exit N) / timed out / skipped
stage() {
    local name=$1 cap=$2 limit rc t0
    shift 2
    limit=$(($(left) - ${RESERVE:-0}))
    ((limit > cap)) && limit=$cap
    echo "=== $name (limit ${limit}s) ==="
    if ((limit < 15)); then
        echo "skipped: not enough time left"
        printf '%s\tskipped (time)\t0\n' "$name" >>"$STATUS"
        return
    fi
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=$?
    local took=$(($(date +%s) - t0)) what=ok
    if ((rc == 124 || rc == 137)); then what="timed out"; elif ((rc != 0)); then what="failed (exit $rc)"; fi
    ((rc != 0)) && echo "!!! stage $name: $what; see $OUT/$name.log (the check goes on)"
    printf '%s\t%s\t%s\n' "$name" "$what" "$took" >>"$STATUS"
}

if ((setup_rc != 0)); then
    echo "!!! setup: installing .whl/*.whl into /tmp/site failed (exit $setup_rc); was .whl/ carried?"
    printf 'setup\tfailed (exit %s)\t0\n' "$setup_rc" >>"$STATUS"
fi

stage gpu 30 bash -c 'nvidia-smi -L && python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))"'

# The numerics of every switch against the plain run; pytest if the machine has it, else the same checks by hand.
if python3 -c "import pytest" 2>/dev/null; then
    RESERVE=280 stage test_fast 150 python3 -m pytest -q -p no:cacheprovider tests/test_fast.py
else
    RESERVE=280 stage test_fast 150 python3 - <<'PY'
import sys, tempfile
from pathlib import Path
from tests.test_fast import SWITCHES, loss_after_steps
data, tmp = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
failed = 0
def check(name, base, fast, tol):
    global failed
    ok = abs(fast - base) / base < tol
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: loss {base:.6f} -> {fast:.6f} (tolerance {tol})")
base = loss_after_steps(data, tmp / "base")
for switch, tol in SWITCHES.items():
    check(switch, base, loss_after_steps(data, tmp / switch, switch), 0.5 if tol is None else tol)
off = ("gpus=1", "fast.bf16=false")
check("cuda_graph", loss_after_steps(data, tmp / "eager", *off, "fast.cuda_graph=false"),
      loss_after_steps(data, tmp / "graph", *off, "fast.cuda_graph=true"), 1e-3)
sys.exit(1 if failed else 0)
PY
fi

RESERVE=270 stage train 100 python3 -m tornado.train gpus=1 "data.out_dir=$DATA" "hydra.run.dir=$OUT/train"

# The paper's grid (5 epochs; 10 and 15: --epochs 5,10,15, three times the time) on one GPU at its full
# training-set size (the prepared set tiled to 138,963 samples), our loop against raw PyTorch and live
# against preaugmented at batch 128 and 2048. --budget-s stops new runs early enough to write the results.
RESERVE=110 stage bench 200 python3 -m tornado.bench --gpus 1 --data tiled --out "$OUT/bench" \
    --sections loop,live,paper --batches 128,512,2048,4096 --epochs 5 --multipliers 1,2,4 \
    --repeats 3 --timed-epochs 2 --budget-s $(($(left) - 110 - 40)) --set "data.out_dir=$DATA"

RESERVE=10 stage switches 150 python3 -m tornado.bench --gpus 1 --data tiled --out "$OUT/switches" \
    --sections switches --batches 128,2048 --repeats 1 --timed-epochs 2 --budget-s $(($(left) - 10 - 50)) \
    --set "data.out_dir=$DATA"

echo "=== summary (${SECONDS} s in all) ==="
column -t -s $'\t' "$STATUS" 2>/dev/null || cat "$STATUS"
python3 -m tornado.bench --summary "$OUT/train/result.json" "$OUT/bench/bench.json" "$OUT/switches/bench.json"
