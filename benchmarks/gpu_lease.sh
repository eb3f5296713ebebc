#!/usr/bin/env bash
# One call of a lent GPU machine (the device tool): fine-tune the shipped weights on the
# 500 phantoms of the GPU run (step 8 of benchmarks/train_shipped.sh), the paper's patch,
# batch 4, for MINUTES minutes of training, and leave in $OUT what a later session needs:
#   log.txt, best.safetensors (only if validation improved), last.safetensors,
#   ckpt.aa + ckpt.ab (checkpoint.pt split under the tool's 16 MB per file:
#   `cat ckpt.aa ckpt.ab > checkpoint.pt`), small.tgz (cards, config, metrics).
#
# That machine's Python has PyTorch but neither SimpleITK nor pydicom; pydicom travels
# as a wheel (`renalseg.phantom` imports it), SimpleITK is not needed (train_gpu.py).
# Here, once: `echo /.whl/ >> .git/info/exclude && mkdir -p .whl && pip download
# --no-deps --only-binary=:all: --python-version 3.12 -d .whl pydicom==3.0.2`; then the
# device tool's run with carry [".whl"] and the command
#   bash benchmarks/gpu_lease.sh 7
# Session 7's lease: 7 + 2.6 minutes of training fitted in 15 minutes of device time
# (start-up ~1.5 min, making the 500 phantoms 1 min). Session 8's: `gpu_lease.sh 7.7`
# (549 s wall), then at once `gpu_lease.sh 1.7` (180 s) on the still-warm machine, 786 s
# of device time in all (step 8c of train_shipped.sh); those calls resumed the GPU run's
# checkpoint, then in weights/training/. Since session 12 the shipped weights come from a
# CPU phase on top of that run (step 9) and weights/training/ holds that phase's
# checkpoint (batch 1, other phantoms), which a GPU run cannot resume; so every call now
# starts a new run from the shipped weights (--init). The GPU run's own checkpoint (step
# 4429) is in git history (commit c9babf4, weights/training/) for anyone who wants it.
# Run again on a still-warm machine and it continues from /tmp/run (what the last call
# left there; the phantoms are made again, 65-70 s).
#
# FRESH=1 instead starts a new run from the shipped weights in which every patch comes
# from a phantom made for it (benchmarks/train_gpu.py --fresh): what docs/training-history.md's "The
# target ... is not reached" suggests next. Nothing is held in memory; each patch costs its
# worker about 1 s (making the phantom 0.7 s, cropping and augmenting 0.19 s, on this
# project's CPU), so 14 workers should come near the 16 patches/s the H200 trained at.
#
# FAINT=FIRST-LAST instead starts a new run from the shipped weights on the 500 phantoms
# plus these seeds made with faint renal arteries (250-340 HU; train_gpu.py --faint-seeds):
# session 10's CPU runs found that half faint phantoms beat the same budget on the usual
# ones (docs/training-history.md); a second call on the still-warm machine continues it
# from /tmp/run. Twice the phantoms take
# about 70 s more to make (and ~36 GB): session 8's 7.7 minutes ran 549 s, so with 1000
# phantoms 6.5 minutes of training keeps the call under the tool's 600 s.
#
# AMP=1 adds --amp (bfloat16 forward pass: on the H200 0.134 s instead of 0.172 s for the
# network's step of four 152 x 152 x 64 patches, while the trainer ran at ~0.25 s per
# step in float32); a run started without it cannot be resumed with it.
#
# Checkpoints are chosen on 8 phantoms made for that alone (seeds 9400-9407, VAL to
# change) since session 9; sessions 7 and 8 used 2 (9000-9001), whose score ordered
# checkpoints noisily (session 8's 40 held-out phantoms, docs/training-history.md). Resuming a run that
# validated on other seeds restarts its best score (the trainer warns).
# Suggested next (docs/training-history.md): `FAINT=1500-1999 bash benchmarks/gpu_lease.sh 6.5`
# (session 10), or `LR=2e-5 bash benchmarks/gpu_lease.sh 7.7` (session 12's CPU phase
# gained at 2e-5 what 5e-5 did not).
#
# Environment: DEVICE (default cuda), LR (default 5e-5, the GPU run's), VAL (validation seeds,
# default 9400-9407), PY (default python3),
# WORKERS (loader processes, default 14) and MAKERS (phantom-making processes, default 15)
# for a machine with other than 16 cores.
set -euo pipefail
MINUTES=${1:?usage: gpu_lease.sh MINUTES}
OUT=${OUT:?the device tool sets OUT}
RUN=${RUN:-/tmp/run}
PY=${PY:-python3}
if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# every mode starts a new run from the shipped weights; what an earlier call on this
# machine left in $RUN is continued
if [ -n "${FRESH:-}" ]; then
  DATA=(--fresh)  # a fresh phantom for every patch
elif [ -n "${FAINT:-}" ]; then
  DATA=(--seeds 1000-1499 --faint-seeds "$FAINT")  # half of the phantoms with faint arteries
else
  DATA=(--seeds 1000-1499)  # the GPU run's 500 phantoms
fi
RESUME=()
if [ -f "$RUN/checkpoint.pt" ]; then RESUME=(--resume); fi
AMPFLAG=()
if [ -n "${AMP:-}" ]; then AMPFLAG=(--amp); fi
status=0
$PY benchmarks/train_gpu.py "$RUN" "${RESUME[@]}" "${DATA[@]}" "${AMPFLAG[@]}" --val-seeds "${VAL:-9400-9407}" \
    --init weights/dpa_densebiasnet.safetensors --encoder weights/dae.safetensors --patch 152,152,64 --batch 4 \
    --lr "${LR:-5e-5}" --seed 7 --samples-per-epoch 400 --time-limit-min "$MINUTES" --loader-workers "${WORKERS:-14}" \
    --make-workers "${MAKERS:-15}" --device "${DEVICE:-cuda}" 2>&1 | tee "$OUT/log.txt" || status=$?
for f in best.safetensors last.safetensors; do
  if [ -f "$RUN/$f" ]; then cp "$RUN/$f" "$OUT/"; fi
done
split -b 15M "$RUN/checkpoint.pt" "$OUT/ckpt."
tar czf "$OUT/small.tgz" -C "$RUN" $(cd "$RUN" && ls ./*.json metrics.* 2>/dev/null)
exit $status
