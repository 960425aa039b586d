#!/usr/bin/env bash
# Every GPU check in one call, the most important first, each part under its own time limit.
#
#     OUT=gpu-out bash scripts/gpu_all.sh        # on a CUDA machine, from the repository root
#
# 1. smoke: gradwise's default path trains a small CUDA model beside torch fused (stops here on
#    a failure: nothing later is worth the machine's time then);
# 2. the CUDA tests of the suite (they skip on a machine without CUDA);
# 3. parity of the default path, CUDA graphs on, and the step's CPU profile (gpu_graphs_probe);
# 4. gpu_check sections 1-6: parity grids, fused=True, fit(), step() timings, copy bandwidth;
# 5. gpu_check section 8: peak GPU memory of an iteration;
# 6. gpu_check section 7: whole training iterations;
# 7. the GPU kernels of the 67M-parameter MLP's iteration (gpu_graphs_probe kernels_67m).
#
# The log is $OUT/all.log; the parts' JSON lands in $OUT too (6 files in all).
# A dry run on the CPU: GRADWISE_CHECK_DEVICE=cpu GRADWISE_CHECK_QUICK=1 PROBE_DEVICE=cpu.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/all.log"
HERE=$(dirname "$0")

part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit ${limit} s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s" | tee -a "$LOG"
    return "$status"
}

part smoke 120 python3 "$HERE/gpu_smoke.py" || exit 1
part cuda-tests 120 python3 -m pytest -p no:cacheprovider -q tests/test_graphs.py \
    tests/test_optim.py -k "cuda or capture"
part probe-parity 90 python3 "$HERE/gpu_graphs_probe.py" parity profile
mv "$OUT/graphs_probe.json" "$OUT/graphs_probe_parity.json" 2>/dev/null
part check-1-6 200 env GRADWISE_CHECK_ONLY=1,2,3,4,5,6 python3 "$HERE/gpu_check.py"
mv "$OUT/gpu_check.json" "$OUT/gpu_check_1-6.json" 2>/dev/null
part check-8-memory 60 env GRADWISE_CHECK_ONLY=8 python3 "$HERE/gpu_check.py"
mv "$OUT/gpu_check.json" "$OUT/gpu_check_8.json" 2>/dev/null
part check-7-iterations 200 env GRADWISE_CHECK_ONLY=7 GRADWISE_CHECK_ROUNDS=11 python3 "$HERE/gpu_check.py"
part probe-kernels-67m 60 python3 "$HERE/gpu_graphs_probe.py" kernels_67m
echo "=== done after $SECONDS s" | tee -a "$LOG"
