#!/usr/bin/env bash
# Reproduces Resources/models/mvctenhance-default.pt (2.0.0) and the numbers in its card and README, from the
# repository root with the project's virtual environment on PATH (CPU, one thread per run, torch 2.13.0).
# Every training run is resumable: re-run its line with --resume after an interruption (the default model was
# trained in two sittings: --stop-after 1700, then --resume; the schedule depends only on --iterations).
set -euo pipefail
export OMP_NUM_THREADS=1

# 1. data: 300 domain-randomised MV slices with their clean twins, 330 kV slices (phantoms + real CT anatomy,
#    augmented), 40 test cases, 8 validation slices and 7 simulator-shift sets of 28 cases (disjoint anatomy)
mvct-enhance make-dataset data/v2 --seed 0 --randomise --validation 8 --shift-sets --real-kv-augmentations 30

# 2. the recipe (the options the default model was trained with; its twins change only --preset or --generator)
recipe() {
  mvct-enhance train --data data/v2 -o "runs/$1" --preset "$2" --generator "$3" --architecture fullres \
    --ngf 16 --fullres-layers 3 --anchor-tv-weight 0 --learned-change-hu 100 --max-change-hu 100 \
    --change-highpass-px 3 --mv-cycle-smooth-px 1.5 --w-denoise 50 --ndf 32 --crop-size 128 --batch-size 2 \
    --iterations 9600 --field-truncation 0.3 --max-rotation-deg 15 --label-jitter-sd 0.2 --checkpoint-every 500 \
    --keep-checkpoints --sample-every 1000 --seed 0 --device cpu --no-progress "${@:4}"
}
# the default model: proposed losses, bounded generator; 5000 of the 9600 scheduled iterations (CPU budget)
recipe default2 proposed bounded --stop-after 5000

# 3. the checkpoint, chosen on validation data only (validation/ and the same anatomy through the independent
#    simulator): lowest mean MAE with no validation case worse than its MVCT
python Resources/models/default-model/select_checkpoint.py data/v2 runs/default2 runs/selection.json
CHOSEN=$(python -c "import json; print(json.load(open('runs/selection.json'))['chosen'])")

# 4. export, evaluate (docs/evaluation/reproduce.sh has the whole comparison), and re-export with the card's
#    evaluation field (same checkpoint, same weights)
mvct-enhance export runs/default2 --checkpoint "runs/default2/checkpoints/$CHOSEN" -o runs/default2-unevaluated.pt \
    --name mvctenhance-default --model-version 2.0.0 --overwrite
bash docs/evaluation/reproduce.sh
python Resources/models/default-model/card_evaluation.py docs/evaluation/evaluation.json runs/default2-unevaluated.pt \
    proposed runs/card_evaluation.json
mvct-enhance export runs/default2 --checkpoint "runs/default2/checkpoints/$CHOSEN" \
    -o Resources/models/mvctenhance-default.pt --name mvctenhance-default --model-version 2.0.0 \
    --card-extra runs/card_evaluation.json --overwrite
python scripts/sync_slicer_files.py   # models.json's sha256 and the CMake file list

# 5. the record kept beside the model
mvct-enhance info Resources/models/mvctenhance-default.pt --json > Resources/models/default-model/model_card.json
cp runs/selection.json Resources/models/default-model/selection.json
for f in losses.csv losses.png config.json run.json; do cp runs/default2/$f Resources/models/default-model/$f; done
