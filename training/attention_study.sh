#!/bin/bash
# The human-vs-machine attention study on EfficientNet-Lite0 (docs/results/README.md, "The attention study"): trains each
# setting on PASCAL-S_train with its fixations (resumable), then scores it on PASCAL-S_test (saliency + gaze metrics of
# every attention map, IG against a centre bias fitted on PASCAL-S_train's fixations) and under FGSM.
#   training/attention_study.sh [SETTING ...]   (default: all nineteen; run from the repository root, ../shared beside it)
# Writes docs/results/attnstudy_<setting>_{train_log.jsonl,PASCAL-S_test.json,fgsm_PASCAL-S_test.json}.
set -euo pipefail
D=${DATA:-../shared/data}
PY=${PYTHON:-.venv/bin/python}
SETTINGS=("$@")
[ ${#SETTINGS[@]} -gt 0 ] || SETTINGS=(sigmoid supervised supervised_kl1 supervised_kl10 supervised_rank supervised_rank3 supervised_rank10 supervised_rank10_residual supervised_rank10_residual_long supervised_rank10_residual_e40 supervised_rank30_residual supervised_rank10_detached supervised_rank10_readout sigmoid_residual sigmoid_long sigmoid_e40 softmax activation human)
TEST=(--images "$D/PASCAL-S/images" --masks "$D/PASCAL-S/masks" --split "$D/splits/PASCAL-S_test.txt")
FIX=(--fixations "$D/PASCAL-S/fixations/fixations.csv")
for setting in "${SETTINGS[@]}"; do
  name=attnstudy_${setting}_effl0
  echo "$(date -u +%H:%M:%S) $name: training"
  "$PY" -m training.train --config "training/configs/$name.yaml" --resume >> "runs/$name.out" 2>&1
  tr '\r' '\n' < "runs/$name.out" | grep '^{"epoch"' > "docs/results/${name}_train_log.jsonl"
  echo "$(date -u +%H:%M:%S) $name: evaluating"
  "$PY" -m training.evaluate --no-progress "${TEST[@]}" "${FIX[@]}" --attention all \
    --ig-baseline-split "$D/splits/PASCAL-S_train.txt" --checkpoint "runs/$name/best.pt" \
    > "docs/results/${name}_PASCAL-S_test.json"
  "$PY" -m training.robustness --no-progress "${TEST[@]}" "${FIX[@]}" --eps 2,8 --checkpoint "runs/$name/best.pt" \
    > "docs/results/${name}_fgsm_PASCAL-S_test.json"
done
echo "$(date -u +%H:%M:%S) done"
