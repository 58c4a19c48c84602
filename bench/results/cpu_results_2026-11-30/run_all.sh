#!/usr/bin/env bash
# Regenerates the training numbers of docs/RESULTS.md (2-core CPU, synthetic data, one run at a time).
# Resumable: rerunning skips every run whose directory already holds summary.json, so the partial
# stages below (a few noise levels and k values first) cost nothing extra when the full ones follow.
set -euo pipefail
OUT=${OUT:-runs/exp1130}
BUDGET=${BUDGET:-"--image-size 32 --synth-train-per-class 20 --synth-difficulty 0.3 --epochs 8 --lr-step 6 --batch-size 32 --eval-every 4 --threads 2 --no-progress"}
# WAIT_PID=PID: start only once that process (an earlier run of this script) has ended
if [ -n "${WAIT_PID:-}" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done; fi
# the three models of the noise study first (the figures need a and rald)
python -m rald_fast.experiments ablation --out $OUT $BUDGET --variants a rald g --table ablation_first
python -m rald_fast.experiments ablation --out $OUT $BUDGET
# a second seed of the baseline and the full model: the spread
python -m rald_fast.experiments ablation --out $OUT $BUDGET --variants a rald --seeds 2 --table ablation_2seeds
python -m rald_fast.experiments noise --out $OUT $BUDGET --flip-percents 0 10 40
python -m rald_fast.experiments ksweep --out $OUT $BUDGET --k-values 1 5 10
python -m rald_fast.experiments noise --out $OUT $BUDGET
python -m rald_fast.experiments ksweep --out $OUT $BUDGET
