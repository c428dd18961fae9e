#!/usr/bin/env bash
# Reproduces Resources/models/mvctenhance-default.pt and the numbers in its card, from the repository
# root, in the project's virtual environment (CPU, one core: about 20 + 23 + 16 + 52 minutes of training here).
# OMP_NUM_THREADS=1: on a shared 2-core machine one thread was ~7x faster than two (OpenMP threads
# waiting for each other); on a free multi-core machine leave it unset.
set -euo pipefail

# 1. the default synthetic dataset (300 kV + 300 MV training slices, 40 paired test cases)
mvct-enhance make-dataset data/default --seed 0

# 2. training in three stages (each run is resumable: re-run it with '-o RUN --resume' after an interruption).
#    The stages were interrupted with Ctrl-C where --stop-after says; the learning-rate schedule depends only on
#    --iterations, so --stop-after reproduces those runs.
# stage 1: 128-pixel crops (fast), 1033 iterations at constant learning rate of a planned 2800
OMP_NUM_THREADS=1 mvct-enhance train --data data/default -o runs/stage1-crop128 --ngf 16 --ndf 32 --crop-size 128 \
    --iterations 2800 --stop-after 1033 --log-every 10 --checkpoint-every 100 --sample-every 100 --seed 0
# stage 2: whole slices (256-pixel crops: instance-norm statistics as at inference), from stage 1's weights
OMP_NUM_THREADS=1 mvct-enhance train --data data/default -o runs/stage2-full --init-from runs/stage1-crop128 \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 650 --stop-after 449 --log-every 10 --checkpoint-every 50 \
    --sample-every 50 --seed 0
# stage 3: whole slices, stronger structure terms (perceptual 200, identity-like 1), from stage 2's weights
OMP_NUM_THREADS=1 mvct-enhance train --data data/default -o runs/default --init-from runs/stage2-full \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 300 --w-perceptual 200 --w-identity 1 --log-every 10 \
    --checkpoint-every 50 --sample-every 50 --seed 0
# stage 4: as stage 3, plus random field-of-view truncation of 30 % of the crops (validate_fields.py showed that
#          stage 3 draws bone along the edges of small fields), from stage 3's weights; exported
OMP_NUM_THREADS=1 mvct-enhance train --data data/default -o runs/stage4-fov --init-from runs/default \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 1000 --w-perceptual 200 --w-identity 1 --field-truncation 0.3 \
    --log-every 10 --checkpoint-every 50 --sample-every 100 --seed 0
# validation on phantoms outside every dataset, whole and cut to a square field (not the test set)
OMP_NUM_THREADS=1 mvct-enhance export runs/default -o runs/stage3.pt --name stage3 --overwrite
OMP_NUM_THREADS=1 mvct-enhance export runs/stage4-fov -o runs/stage4.pt --name stage4 --overwrite
OMP_NUM_THREADS=1 python Resources/models/default-model/validate_fields.py runs/stage3.pt runs/stage4.pt

# 3. export, evaluate on the held-out paired test set, and write the numbers into the card
mvct-enhance export runs/stage4-fov -o runs/default-unevaluated.pt --name mvctenhance-default --model-version 1.1.0
mvct-enhance evaluate --test-set data/default --methods mvct proposed=runs/default-unevaluated.pt kv \
    -o runs/default-evaluation --device cpu --title "MVCTEnhance default model: held-out paired test set"
python Resources/models/default-model/card_evaluation.py runs/default-evaluation/evaluation.json \
    runs/default-unevaluated.pt runs/default-card-extra.json
mvct-enhance export runs/stage4-fov -o Resources/models/mvctenhance-default.pt --name mvctenhance-default \
    --model-version 1.1.0 --card-extra runs/default-card-extra.json --overwrite

# 4. the files beside the model
mvct-enhance info Resources/models/mvctenhance-default.pt --json > Resources/models/default-model/model_card.json
cp runs/stage4-fov/losses.csv runs/stage4-fov/losses.png runs/stage4-fov/config.json runs/stage4-fov/run.json \
    Resources/models/default-model/
for stage in stage1-crop128 stage2-full; do
    for f in losses.csv losses.png config.json run.json; do cp runs/$stage/$f Resources/models/default-model/${stage}_$f; done
done
for f in losses.csv losses.png config.json run.json; do cp runs/default/$f Resources/models/default-model/stage3_$f; done
cp runs/default-evaluation/report.md Resources/models/default-model/evaluation_report.md
cp runs/default-evaluation/summary.csv Resources/models/default-model/evaluation_summary.csv
cp runs/default-evaluation/montage.png Resources/models/default-model/evaluation_montage.png
cp "$(ls runs/stage4-fov/samples/sample_*.png | tail -1)" Resources/models/default-model/sample_final.png
