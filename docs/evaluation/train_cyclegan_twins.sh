#!/usr/bin/env bash
# The plain-CycleGAN twins of the default model for the evaluation: the exact stages of
# Resources/models/default-model/reproduce.sh with --preset cyclegan (no perceptual, autoencoder or air term;
# everything else identical: data, seeds, crops, iterations, learning rates, identity-like weight, truncation).
# Run from the repository root in the project's virtual environment after 'make-dataset data/default --seed 0'.
# CPU, one core: about 12 + 18 + 12 + 42 minutes here.
set -euo pipefail
export OMP_NUM_THREADS=1
mvct-enhance train --data data/default -o runs/cg-stage1 --preset cyclegan --ngf 16 --ndf 32 --crop-size 128 \
    --iterations 2800 --stop-after 1033 --log-every 10 --checkpoint-every 100 --sample-every 100 --seed 0
mvct-enhance train --data data/default -o runs/cg-stage2 --preset cyclegan --init-from runs/cg-stage1 \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 650 --stop-after 449 --log-every 10 --checkpoint-every 50 \
    --sample-every 50 --seed 0
mvct-enhance train --data data/default -o runs/cg-stage3 --preset cyclegan --init-from runs/cg-stage2 \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 300 --w-identity 1 --log-every 10 \
    --checkpoint-every 50 --sample-every 50 --seed 0
mvct-enhance export runs/cg-stage3 -o runs/cyclegan-matched.pt --name cyclegan-matched --model-version 1.0.0
mvct-enhance train --data data/default -o runs/cg-stage4-fov --preset cyclegan --init-from runs/cg-stage3 \
    --ngf 16 --ndf 32 --crop-size 256 --iterations 1000 --w-identity 1 --field-truncation 0.3 --log-every 10 \
    --checkpoint-every 50 --sample-every 100 --seed 0
mvct-enhance export runs/cg-stage4-fov -o runs/cyclegan-matched-fov.pt --name cyclegan-matched-fov --model-version 1.1.0
