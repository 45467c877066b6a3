#!/bin/bash
# Evaluation by data/clean-train/RULE.txt after the run ends (helper D): candidate and shipped weights in one code state.
cd "$(dirname "$0")/../.." && . .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
while kill -0 "$(cat data/clean-train/run.pid)" 2>/dev/null; do sleep 5; done
S=models/sdgmnet-half.pt
C=data/clean-train/sdgmnet-half-clean.pt
O=data/clean-train
head() { date -u; git rev-parse --short HEAD; git status --short | grep -v '^??' ; sha256sum $S $C; uptime; }
( head; nice python bench/hard_patches.py --model $C --model $S --no-baselines --cache data/hard-cache \
    --ratios 0.8 --threads 1 --json $O/hard.json; head ) > $O/hard.log 2>&1
( head; nice python bench/heldout_scenes.py --model $C --no-rootsift; head ) > $O/heldout_candidate.log 2>&1
( head; nice python bench/hard_patches.py --model $C --model $S --no-baselines --cache data/hard-clean --tracks clean \
    --ratios 0.8 --threads 1 --json $O/hard_clean.json; head ) > $O/hard_clean.log 2>&1
echo done > $O/eval.done
