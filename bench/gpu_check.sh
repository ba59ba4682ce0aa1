#!/usr/bin/env bash
# `make gpu-check` on a CUDA machine without network (the device machine): install the packages its image lacks from
# .whl/ (made by `make gpu-wheels`) and mmdlm from this working tree into $GPU_CHECK_SITE, beside the machine's own
# torch (never installed here), then run bench/gpu_check.py. Writes bench/results/gpu.json and, where $OUT is set,
# gpu.json, gpu-check.log and gpu-tests.xml in $OUT. Extra arguments go to bench/gpu_check.py.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=${GPU_CHECK_SITE:-/tmp/site}
LOG=${OUT:-/tmp}/gpu-check.log
unset PIP_CONSTRAINT
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{
  start=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "gpu-check: the wheels in .whl/ did not install (make gpu-wheels makes them)"
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" . \
    || echo "gpu-check: mmdlm did not install; it is imported from the working tree"
  echo "gpu-check: installed in $(( $(date +%s) - start )) s"
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  python3 bench/gpu_check.py --device cuda ${OUT:+--copy-to "$OUT"} "$@"
} 2>&1 | tee "$LOG"
