#!/bin/bash
# Clean-rule camera-track sets of models/sdgmnet-half-spatial.toml (helper D, session 8), then their spatial sets.
cd "$(dirname "$0")/../.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OPENCV_FOR_THREADS_NUM=1
S=../shared/data/scenes
O=data/clean-train
C="nice taskset -c 1 matcher dataset cameras"
N="nice taskset -c 1 python -m matcher.training.spatial_negatives"
run() { local name=$1; shift; local t0=$(date +%s); "$@" > $O/$name.out 2>&1; echo "$name rc=$? $(( $(date +%s) - t0 )) s $(tail -1 $O/$name.out)" >> $O/times.txt; }
mkdir -p $O/spatial
one() { # name, scene arg, image dir, max-edge or "", extra args...
  local name=$1 scene=$2 images=$3 edge=$4; shift 4
  local e=(); [ -n "$edge" ] && e=(--max-edge $edge)
  run $name $C $scene --out $O/$name.h5 "${e[@]}" --pipeline sdgmnet --tracks clean "$@"
  run spatial-$name $N $O/$name.h5 $images $O/spatial/$name.h5 "${e[@]}" --pipeline sdgmnet
}
one cam-castle-P19 $S/castle-P19 $S/castle-P19/images ""
one cyprus $S/cyprus/images $S/cyprus/images 1200 --reconstruction data/rec/cyprus/sparse
one castle-P19-1024 $S/castle-P19 $S/castle-P19/images 1024
one sceaux-castle $S/sceaux-castle/images $S/sceaux-castle/images "" --reconstruction data/rec/sceaux-castle/sparse
one sceaux-castle-1024 $S/sceaux-castle/images $S/sceaux-castle/images 1024 --reconstruction data/rec/sceaux-castle/sparse
one cam-castle-P30 $S/castle-P30 $S/castle-P30/images ""
echo done >> $O/times.txt
