#!/usr/bin/env bash
# Figures, speed, Table 1 and ITRR modes from the finished runs of run_all.sh (COPY_ONLY=1: skip them),
# then a copy here of every raw output of the finished runs, without checkpoints (summary.json,
# metrics.jsonl, config.json, tables, PNGs).
set -euo pipefail
OUT=${OUT:-runs/exp1130}
HERE=$(dirname "$0")
A=$(ls -d $OUT/runs/a-k5-flip10-s0-*)/last.pt
R=$(ls -d $OUT/runs/rald-k5-flip10-s0-*)/last.pt
if [ -z "${COPY_ONLY:-}" ]; then
python -m rald_fast.experiments figures --baseline $A --rald $R --out $OUT/figures
python -m rald_fast.experiments compare $A $R --names ResNet18 RALD --out $OUT/compare
python -m rald_fast.experiments fps --checkpoints $A $R --batch-size 64 --image-size 32 112 \
    --warmup 3 --iters 10 --threads 2 --out $OUT/fps
python -m rald_fast.experiments modes $R --batch-sizes 1 8 32 128 --out $OUT/modes
fi
for d in $OUT/runs/*/; do
  [ -f $d/summary.json ] || continue  # unfinished
  mkdir -p $HERE/runs/$(basename $d)
  cp $d/{config.json,metrics.jsonl,summary.json} $HERE/runs/$(basename $d)/ 2>/dev/null || true
done
for d in $OUT $OUT/figures $OUT/compare $OUT/fps $OUT/modes; do
  mkdir -p $HERE/${d#$OUT}
  cp $d/*.{md,csv,json,png} $HERE/${d#$OUT}/ 2>/dev/null || true
done
rm -f $HERE/ablation_first.*  # a progress table of run_all.sh, superseded by ablation.*
du -sh $HERE
