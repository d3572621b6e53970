#!/usr/bin/env bash
# Every GPU figure in ONE device call (at most 580 s on one H100, from a bare machine):
#   (a) pytest -m cuda  (b) training throughput  (c) time to quality  (d) decoding the test set
#   (e) the GPU preset's test BLEU in the other directions.
# Writes $OUT/gpu_report.json and $OUT/gpu_report.md (stages: scripts/gpu/check.py).
#
# Run from the repository root (the staged .whl/ and .gpu/ folders are relative to it):
#   bash scripts/gpu/check.sh --stage   here, before the device call: copies the Hydra/pytest wheels into
#                                       .whl/ and Multi30k into .gpu/multi30k (both git-ignored, carried)
#   bash scripts/gpu/check.sh           on the device machine (see docs/cluster.md for the `run` call)
#   bash scripts/gpu/check.sh --smoke   every stage tiny on the CPU, same report files (part of the tests; it and
#                                       --quality-smoke read the first lines of Multi30k's splits, from
#                                       SMOKE_MULTI30K, default ../shared/data/multi30k)
#   bash scripts/gpu/check.sh --quality        a device call of its own (a lease holds it or the check, not
#                                              both): (f) issue 13's GPU row by distillation (teachers,
#                                              their ensembles, students on their translations; docs/cluster.md)
#   bash scripts/gpu/check.sh --quality-smoke  (f) tiny on the CPU (part of the tests)
#   bash scripts/gpu/check.sh --scale          a device call of its own: (g) a ~1M-pair synthetic corpus made on the
#                                              machine from the carried Multi30k, prepared; its DataLoader alone and
#                                              the WMT preset's training step, fp32 and bf16 (scripts/gpu/scale_stage.py)
#   bash scripts/gpu/check.sh --scale-smoke    (g) tiny on the CPU (part of the tests; SMOKE_MULTI30K: the Multi30k
#                                              folder, default ../shared/data/multi30k)
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root

mode=full
case "${1:-}" in
  "") ;;
  --smoke) mode=smoke ;;
  --stage) mode=stage ;;
  --quality) mode=quality ;;
  --quality-smoke) mode=quality_smoke ;;
  --scale) mode=scale ;;
  --scale-smoke) mode=scale_smoke ;;
  *) echo "usage: scripts/gpu/check.sh [--smoke | --stage | --quality | --quality-smoke | --scale | --scale-smoke]" >&2
     exit 2 ;;
esac

if [ "$mode" = stage ]; then
  set -e
  shared=${SHARED:-../shared}
  mkdir -p .whl .gpu
  cp "$shared"/gpu-wheels/*.whl .whl/
  # pytest for stage (a); pure-Python wheels, pinned to what the test suite runs here.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 -d .whl pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pygments==2.20.0
  rm -rf .gpu/multi30k && cp -r "$shared"/data/multi30k .gpu/multi30k
  # The report names the commit from here: the device machine's .git may be an older copy.
  echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- seq2seq conf scripts tests || echo +uncommitted)" > .gpu/commit
  du -sh .whl .gpu
  exit 0
fi

OUT=${OUT:-$PWD/outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# A bare device machine lacks hydra-core, omegaconf, antlr4 (and maybe pytest): install the carried wheels.
if ! python3 -c "import hydra, omegaconf, pytest" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target .gpu/site .whl/*.whl
    export PYTHONPATH=$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "error: hydra-core/omegaconf/pytest are missing and .whl/ holds no wheels; run scripts/gpu/check.sh --stage first" >&2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

args=(--mode "$mode" --out "$OUT")
if [ "$mode" = full ] || [ "$mode" = quality ] || [ "$mode" = scale ]; then
  [ -d .gpu/multi30k ] && { args+=(--data-root "$PWD/.gpu/multi30k"); export SEQ2SEQ_DATA_ROOT=$PWD/.gpu/multi30k; }
  args+=(--data-dir "$PWD/.gpu/data")  # the prepared-data cache stays on the machine
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
else
  export OMP_NUM_THREADS=1
  args+=(--data-dir "${SMOKE_DATA_DIR:-$OUT/data}")
  [ -n "${SMOKE_MULTI30K:-}" ] && args+=(--data-root "$SMOKE_MULTI30K")
fi
exec python3 scripts/gpu/check.py "${args[@]}"
