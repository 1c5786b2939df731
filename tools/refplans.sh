#!/usr/bin/env bash
# refplans.sh REPO OUTDIR: the plans of the five reference models, written by the CLI of the checkout REPO.
# Layout changes must leave these byte-identical: run it on a checkout of the old commit and on this one, then
# diff the two OUTDIRs (issue 26: the only difference since the layout move is the added "settings" line).
set -u
repo=$1; out=$2; mkdir -p "$out"; cd "$out"
run() { name=$1; shift; PYTHONPATH=$repo OMP_NUM_THREADS=1 python -m slimnet shrink "torchvision:$name" "$@" -o "$out/$name-slim.pt" --quiet > "$out/$name.log" 2>&1; echo "$name rc=$?"; }
run resnet50 --ratio 0.5 --criterion fpgm
run mobilenet_v3_small --target-macs 0.5
run vit_b_16 --ratio 0.5 --criterion l2
run densenet121 --ratio 0.5 --global
run efficientnet_b0 --ratio 0.5 --criterion bn-scale
rm -f "$out"/*.pt
