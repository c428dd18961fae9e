#!/usr/bin/env bash
# Reproduces this report: the default model's twins, the comparison on the standard and the seven
# simulator-shift sets, and the reduced training-set-size study. From the repository root, the project's
# virtual environment on PATH, after Resources/models/default-model/reproduce.sh steps 1-3 (data/v2,
# runs/default2, runs/selection.json). CPU, one thread per run.
set -euo pipefail
export OMP_NUM_THREADS=1
recipe() {  # the default model's recipe (Resources/models/default-model/reproduce.sh)
  mvct-enhance train --data data/v2 -o "runs/$1" --preset "$2" --generator "$3" --architecture fullres \
    --ngf 16 --fullres-layers 3 --anchor-tv-weight 0 --learned-change-hu 100 --max-change-hu 100 \
    --change-highpass-px 3 --mv-cycle-smooth-px 1.5 --w-denoise 50 --ndf 32 --crop-size 128 --batch-size 2 \
    --iterations 9600 --field-truncation 0.3 --max-rotation-deg 15 --label-jitter-sd 0.2 --checkpoint-every 500 \
    --keep-checkpoints --sample-every 1000 --seed 0 --device cpu --no-progress "${@:4}"
}
# The twins: identical recipe, data and seeds; only the preset (plain CycleGAN: no perceptual, autoencoder or air
# term) or the generator (paper = unbounded, no calibrated anchor) differs. Reduced budgets (CPU): 2000 iterations
# for the bounded CycleGAN, 1000 for the unbounded pair; each is compared with the default run's checkpoint at
# the same iteration (runs/default2/checkpoints/iteration_0001000.pt, _0002000.pt).
[ -f runs/cyclegan2/checkpoints/iteration_0002000.pt ] || recipe cyclegan2 cyclegan bounded --stop-after 2000
[ -f runs/proposed2-unbounded/checkpoints/iteration_0001000.pt ] || recipe proposed2-unbounded proposed paper --stop-after 1000
[ -f runs/cyclegan2-unbounded/checkpoints/iteration_0001000.pt ] || recipe cyclegan2-unbounded cyclegan paper --stop-after 1000
mkdir -p runs/models
export_at() { mvct-enhance export "runs/$1" --checkpoint "runs/$1/checkpoints/iteration_$2.pt" -o "runs/models/$3.pt" \
                --name "$3" --model-version 0.2.0 --overwrite > /dev/null; }
export_at default2 0001000 proposed-1000
export_at default2 0002000 proposed-2000
export_at cyclegan2 0001000 cyclegan-1000
export_at cyclegan2 0002000 cyclegan-2000
export_at proposed2-unbounded 0001000 proposed-unbounded-1000
export_at cyclegan2-unbounded 0001000 cyclegan-unbounded-1000

# The training-set-size study: both presets (bounded) on 25..300 MV slices, 300 iterations each (reduced).
mvct-enhance study-datasize data/v2 -o runs/datasize-v2 --base-config runs/default2 --sizes 25,50,100,200,300 \
    --iterations 300 --crop-size 128 --ngf 16 --ndf 32 --device cpu
mkdir -p docs/evaluation/datasize
cp runs/datasize-v2/datasize.{md,png,csv,json} runs/datasize-v2/datasize_summary.csv docs/evaluation/datasize/

# The comparison (the default model as evaluated: runs/default2-unevaluated.pt, the shipped weights).
mvct-enhance evaluate --test-set data/v2 --all-sets \
    --methods mvct nlm tv calib calib+tv calib+nlm \
              cyclegan-unbounded-1000=runs/models/cyclegan-unbounded-1000.pt cyclegan-1000=runs/models/cyclegan-1000.pt \
              cyclegan-2000=runs/models/cyclegan-2000.pt \
              proposed-unbounded-1000=runs/models/proposed-unbounded-1000.pt proposed-1000=runs/models/proposed-1000.pt \
              proposed-2000=runs/models/proposed-2000.pt proposed=runs/default2-unevaluated.pt kv \
    --ablation calib:mvct calib+tv:tv proposed-1000:proposed-unbounded-1000 cyclegan-1000:cyclegan-unbounded-1000 \
    --dig-pairs cyclegan-2000:proposed-2000 cyclegan-1000:proposed-1000 cyclegan-unbounded-1000:proposed-unbounded-1000 \
    --datasize docs/evaluation/datasize -o docs/evaluation --overwrite --device cpu \
    --notes docs/evaluation/discussion.md \
    --title "MVCTEnhance evaluation: default model 2.0 against calibrated baselines and its twins, on the standard and seven simulator-shift sets (synthetic)"
