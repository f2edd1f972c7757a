#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax.distributed finds the pod itself.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/irvi.py:scene=traffic \
#       /mnt/shared/runs/irvi --config.data.data_dir=/mnt/shared/tfds \
#       --config.model.vit_weights=/mnt/shared/weights/vit.npz --config.data.global_batch_size=32
#
# Expects: gcloud configured for the project; on every worker the repository cloned at
# ~/cptrans-jax and installed with `pip install -e '.[tpu]'`; WORKDIR and the data on a file
# system all workers share (e.g. a Filestore or GCSFuse mount). The global batch must divide
# over all TPU cores.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
config=${1:?config file}; workdir=${2:?workdir}; shift 2
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/cptrans-jax && python -m cptrans_jax.train --config $config --workdir $workdir --multiprocess$extra"
