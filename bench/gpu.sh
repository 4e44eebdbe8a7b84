#!/usr/bin/env bash
# The device command of issue 18's GPU run (bench/gpu.py), for a machine with torch and
# transformers but no network: install the carried wheels, then run every section within the budget.
#
#   here:   .venv/bin/python bench/gpu.py --prepare .gpucarry
#   device: run(command="bash bench/gpu.sh", carry=[".gpucarry"], timeout_s=540)
#
# Results: $OUT/gpu-<device>.json (rewritten after every record), $OUT/gpu.log (all output),
# $OUT/gpu-e2e-worker.log. Arguments are passed on to bench/gpu.py (e.g. --budget-s 300,
# --sections engine,e2e). GPU_CARRY (default .gpucarry), PYTHON (default python3) and
# GPU_BUDGET_S (default 450) may be set.
set -uo pipefail
cd "$(dirname "$0")/.."
carry=${GPU_CARRY:-.gpucarry}
py=${PYTHON:-python3}
budget=${GPU_BUDGET_S:-450}
out=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_CONSTRAINT  # nothing but the carried wheels
start=$(date +%s)
{
  echo "== $(date -u +%FT%TZ) $(uname -m) $($py -V 2>&1); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
  # Every carried wheel into /tmp/gpu-site, first on PYTHONPATH (the README's way for this machine):
  # the machine's torch and transformers stay in use, and our pins win where its versions differ
  # (its huggingface_hub 1.33 wants click >= 8.4, faust-streaming 0.15 needs click < 8.4, so
  # installing into its environment cannot resolve: seen in the rehearsal).
  rm -rf /tmp/gpu-site
  $py -m pip install -q --no-cache-dir --no-deps --upgrade --target /tmp/gpu-site \
    --find-links "$carry/wheels" -r "$carry/wheels/pinned.txt" || { echo "== the wheels did not install"; exit 3; }
  if [[ -d "$carry/torchao" ]] && ! $py -c 'import torchao' 2>/dev/null; then
    $py -m pip install -q --no-cache-dir --no-deps --upgrade --target /tmp/gpu-site "$carry"/torchao/*.whl \
      || echo "== torchao did not install (the fp8 torchao case will say so)"
  fi
  export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
  echo "== set up in $(( $(date +%s) - start )) s"
  # the budget counts from here; timeout is the backstop if a case hangs past it
  timeout --signal=TERM --kill-after=15 $(( budget + 45 )) \
    $py bench/gpu.py --data "$carry" --budget-s "$budget" "$@"
  echo "== exit $? after $(( $(date +%s) - start )) s"
} 2>&1 | tee "$out/gpu.log"
