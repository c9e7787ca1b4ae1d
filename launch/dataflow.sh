#!/usr/bin/env bash
# Runs data prep on Dataflow; see launch/dataflow.md. Extra arguments go to data_prep.build.
# Required environment: PROJECT, REGION, BUCKET (gs://...), IMAGE (SDK container), INPUT, OUTPUT.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}" "${IMAGE:?set IMAGE}"
: "${INPUT:?set INPUT (gs://... folder or glob)}" "${OUTPUT:?set OUTPUT (gs://...)}"
cd "$(dirname "$0")/.."
exec python -m data_prep.build \
  --input="$INPUT" --output_dir="$OUTPUT" \
  --resolution="${RESOLUTION:-256}" --variants_per_face="${VARIANTS:-4}" --seed="${SEED:-0}" \
  --occluders_dir="${OCCLUDERS_DIR:-/opt/deocc/occluders}" \
  --runner=DataflowRunner --project="$PROJECT" --region="$REGION" \
  --temp_location="$BUCKET/tmp" --staging_location="$BUCKET/staging" \
  --sdk_container_image="$IMAGE" --sdk_location=container --experiments=use_runner_v2 \
  --machine_type="${MACHINE_TYPE:-n2-standard-8}" --max_num_workers="${MAX_WORKERS:-20}" \
  "$@"
