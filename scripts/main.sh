#!/usr/bin/env bash
# Fresh machine -> trained model, validation metrics, both Kaggle submissions and the write-up.
#   FACEREC_DATA   dataset root (default: ../shared/data/facehw beside this checkout)
#   RUN            run folder (default: runs/quickstart)
#   EPOCHS         training epochs (default: 3, a short run; the full CPU recipe uses 12)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${FACEREC_DATA:-../shared/data/facehw}
RUN=${RUN:-runs/quickstart}
EPOCHS=${EPOCHS:-3}
if [ ! -x .venv/bin/facerec ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q --no-deps facenet-pytorch==2.6.0  # MTCNN; its pins would downgrade torch
  .venv/bin/python -m pip install -q -e '.[test,serve,onnx,photos]'   # the same set CI tests with
fi
F=.venv/bin/facerec
$F train --data "$DATA" --out "$RUN" --config cpu train.epochs="$EPOCHS"
$F evaluate --checkpoint "$RUN/best.pt" --data "$DATA"
$F predict --checkpoint "$RUN/best.pt" --data "$DATA" --out "$RUN/submission"
$F report "$RUN"
echo "submissions: $RUN/submission/  write-up: $RUN/report/report.md"
