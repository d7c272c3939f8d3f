#!/usr/bin/env bash
# The original scripts' flow, the README's table row by row (02 -> 03 -> 04 -> 13 -> 14 -> 15
# -> 16, and 16's 64 rows into 15 again), exactly as a user types it after `make demo`, with
# the tiny model: the README block under "The original scripts on the demo data".
# tests/test_original_flow.py runs it in a fresh
# project made by the demo's data step; it runs from any project's root after `make demo`.
set -euo pipefail
playground/02-shuffle_data.sh -v 10 -n set1
playground/03-do_learn.py -d set1 -w trained-set1 --model tiny
playground/04-validate.py -m checkpoints/trained-set1.npz dataset/set1/train.jsonl dataset/set1/valid.jsonl
playground/13-inference.py -l checkpoints/trained-set1.npz -d dataset/demo/data.tsv -i dataset/demo -b 4 > out.tsv
playground/14-validate_outtsv.py out.tsv dataset/demo/data.tsv
playground/15-train.py -d dataset/demo/data.tsv -i dataset/demo -b 10 -r 0.001 -t 8 -s checkpoints/tsv.npz --model tiny
playground/16-filter_train_data.py out.tsv | head -64 > next.tsv
playground/15-train.py -d next.tsv -i dataset/demo -b 10 -r 0.001 -t 8 -l checkpoints/trained-set1.npz -s checkpoints/next.npz
