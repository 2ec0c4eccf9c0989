#!/usr/bin/env bash
# One prepared run for a lent GPU machine (issue 12): make the data there, train every stage of the cpu recipe
# on CUDA in about 8 minutes, smoke-test the CUDA paths and the `paper` preset, and leave the model in $OUT.
#
#   OUT=/path/to/out bash tools/train_on_device.sh        # from the repository root
#
# Not yet run: no session so far was lent a GPU. The step counts are estimates (about 10x the CPU rates);
# every stage resumes, so rerunning the script continues where a timeout stopped it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"
WORK="${WORK:-/tmp/deblur_rotate_device}"
mkdir -p "$OUT" "$WORK"
PY=.venv/bin/python
[ -x "$PY" ] || { python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true

# data: the same recipe as the bundled model (120 subjects x 1 performance of 0.8 s at 64 px), 16 workers
/usr/bin/time -v .venv/bin/deblur-rotate synth --out "$WORK/synth" --subjects 120 --performances 1 --seconds 0.8 \
    --size 64 --workers "$(nproc)" > "$OUT/synth.log" 2>&1

# the CUDA paths and the paper preset: a few iterations each (smoke test, not a model)
timeout 120 .venv/bin/deblur-rotate train sharp-encoder --preset paper --fresh-generator --data "$WORK/synth" \
    --out "$WORK/paper_smoke" --steps 5 --batch 4 --precision bf16 --device cuda --no-progress \
    > "$OUT/paper_smoke.log" 2>&1 || echo "paper smoke test failed: see paper_smoke.log" >> "$OUT/gpu.txt"
timeout 60 "$PY" -m pytest -q tests/test_render.py > "$OUT/cuda_tests.log" 2>&1 || true

# every stage of the cpu recipe on CUDA, larger batches; about 8 minutes in all
timeout 540 .venv/bin/deblur-rotate train all --preset tiny --recipe cpu --data "$WORK/synth" --out "$WORK/run" \
    --device cuda --fp16-model --checkpoint-every 1000 --no-progress \
    --steps sharp_encoder=12000 blur_encoder=4000 face3d=2000 fusion=2000 \
    --batch sharp_encoder=32 blur_encoder=32 face3d=32 fusion=32 > "$OUT/train_all.log" 2>&1 || true

if [ -f "$WORK/run/model/pipeline.json" ]; then
    cp -r "$WORK/run/model" "$OUT/model"
    cp "$WORK/run/train_all.json" "$OUT/"
    "$PY" benchmarks/same_view_quality.py --model "$OUT/model" --data "$WORK/synth" --split test --limit 240 \
        --device cuda > "$OUT/same_view.txt" 2>&1 || true
fi
ls -la "$OUT"
