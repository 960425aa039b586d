#!/usr/bin/env bash
# Remake the pictures of docs/gallery.md with the commands shown there (about 5 minutes on
# 2 cores). Reports go to runs/gallery/<name>/ (summary.md, summary.csv, runs/...); the PNGs
# are copied to docs/gallery/. Usage: scripts/make_gallery.sh [name ...]  (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/gallery
DOCS=docs/gallery
mkdir -p "$RUNS" "$DOCS"

ONLY="${*:-}"
want() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }
show() { echo "+ $*" >&2; "$@"; }
report() {  # report NAME COMMAND...: run a compare into runs/gallery/NAME, copy its curves.png
    local name=$1; shift
    want "$name" || return 0
    show "$@" --out "$RUNS/$name" --no-progress
    cp "$RUNS/$name/curves.png" "$DOCS/$name.png"
}
finder() {  # finder NAME COMMAND...: run an lr-find into runs/gallery/NAME, copy lr_find.png
    local name=$1; shift
    want "$name" || return 0
    show "$@" --out "$RUNS/$name"
    cp "$RUNS/$name/lr_find.png" "$DOCS/$name.png"
}
plot() {  # plot NAME COMMAND...: a schedule plot straight into docs/gallery/NAME.png
    local name=$1; shift
    want "$name" || return 0
    show "$@" --out "$DOCS/$name.png"
}

# 1. The spec's four optimizers
report optimizers-digits gradwise compare --dataset digits --optimizers sgd,momentum,rmsprop,adam \
    --seeds 3 --epochs 10
report optimizers-mnist1d gradwise compare --dataset mnist1d --optimizers sgd,momentum,rmsprop,adam \
    --seeds 2 --epochs 30
# every optimizer name at its own lr-find rate (about 7 minutes more on 2 cores)
if want optimizers-lrfind-mnist1d; then
    show python scripts/optimizer_gallery.py --seeds 1 --jobs 2 --out "$RUNS/optimizers-lrfind" \
        --docs "$DOCS"
fi

# 2. Batch, stochastic and mini-batch gradient descent
report batch-modes-digits gradwise compare --dataset digits --optimizer sgd --lr 0.02 \
    --batch-sizes full,1,64 --seeds 2 --epochs 30

# 3. The learning rate: the range test, then too small / suggested / too large
finder lr-find-digits gradwise lr-find --dataset digits
finder lr-find-mnist1d gradwise lr-find --dataset mnist1d
# 3.1e-3 and 7.9e-3 are what the two lr-find commands above suggest
report lr-digits gradwise compare --dataset digits --lrs 1e-5,3.1e-3,0.1 --seeds 3 --epochs 10
report lr-mnist1d gradwise compare --dataset mnist1d --lrs 4.3e-4,1e-3,3e-3,7.9e-3 --seeds 2 \
    --epochs 30

# 4. Schedules
plot schedule-shapes gradwise schedule constant "step:360:0.3" "exp:0.997" cosine --steps 1080 \
    --base-lr 0.01
plot schedule-plateau gradwise schedule "warmup:100,cosine:900" --plateau-at 400,700 --steps 1000
report schedules-mnist1d gradwise compare --dataset mnist1d \
    --schedules "constant;step:360:0.3;exp:0.997;cosine;plateau" --plateau-patience 3 \
    --seeds 2 --epochs 30

# 5. Initialization of a deep ReLU net
DEEP=128,128,128,128,128,128,128,128,128,128,128,128,128,128,128,128  # 16 hidden layers
report init-digits gradwise compare --dataset digits --hidden $DEEP \
    --optimizer momentum --lr 0.01 --inits he,xavier,small,normal --seeds 3 --epochs 10

# 6. Regularization on a small training set
report regularization-mnist1d gradwise compare --dataset mnist1d --val-fraction 0.9 \
    --regularizers none,l1=0.1,l2=5e-2,dropout=0.3 --seeds 2 --epochs 150

# 7. The combination, chosen by gradwise tune (10 minutes of search, then the 3-seed retrain)
if want tune-mnist1d; then
    show gradwise tune --dataset mnist1d --model cnn1d --time 10m --jobs 2 --out "$RUNS/tune-cnn"
    cp "$RUNS/tune-cnn/history.png" "$DOCS/tune-history-mnist1d.png"
    cp "$RUNS/tune-cnn/importances.png" "$DOCS/tune-importances-mnist1d.png"
fi

echo "gallery pictures in $DOCS" >&2
