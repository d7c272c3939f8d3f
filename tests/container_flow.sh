#!/usr/bin/env bash
# The practitioners' flow (01 -> 02 -> 03 -> 04 -> 13 -> 14 -> 16 -> 15) on the tiny model,
# from the root of a project folder, as a user types it. tests/test_container.py runs it
# inside the image (bin/docker-run.sh --no-gpu bash tests/container_flow.sh); it runs on a
# host too. Small and fast: 32 generated images, 8 training steps.
set -euo pipefail
P=playground
python "$P/01-download_models.py" --model tiny
python - <<'PY'
from palijudge.data import examples, synthetic
path = synthetic.make_dataset("dataset", n=32, seed=3)
examples.write_examples("dataset/data.tsv", examples.read_examples(path))
PY
python "$P/02-shuffle_data.py" -v 8 -n set1 --stratify --seed 1
python "$P/03-do_learn.py" -d set1 -w flow --model tiny --steps 8 --batch 4 --optimizer adam \
  --lr 0.003
python "$P/04-validate.py" -m checkpoints/flow.npz dataset/set1/train.jsonl dataset/set1/valid.jsonl
python "$P/13-inference.py" -l checkpoints/flow.npz -d dataset/data.tsv -i dataset -b 4 > out.tsv
python "$P/14-validate_outtsv.py" out.tsv
python "$P/16-filter_train_data.py" out.tsv --keep tn+fp -o dataset/next.tsv
python "$P/15-train.py" -d dataset/next.tsv -i dataset -b 4 -r 0.001 -t 1 -l checkpoints/flow.npz \
  -s checkpoints/flow2.npz
python "$P/04-validate.py" -m checkpoints/flow2.npz dataset/set1/valid.jsonl
echo "flow: done"
