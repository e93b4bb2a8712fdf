#!/bin/bash
# mrseg-cohort on the UK Biobank Research Analysis Platform (DNAnexus): N independent jobs of the Swiss Army
# Knife app, job I running `mrseg-cohort run CONFIG --shard I/N` on a GPU instance.
#
#   infra/ukbb-rap/fan-out.sh --shards 8 --config "/mrseg/ukbb rap.yaml" \
#       --image-file /mrseg/mrseg-cohort-0.2.0.tar.gz --destination /mrseg/results \
#       --instance-type mem2_ssd1_gpu1_x8 [--only 3,5] [--priority normal] [--dry-run]
#
# Each job reads the bulk files through the project's read-only dxfuse mount (/mnt/project/Bulk/...: the
# config's input.uri, with its spaces) and the config itself from /mnt/project<CONFIG>. It writes its shard's
# output (labels and tables) to its own instance disk ($HOME/mrseg-output/), then uploads that folder into the
# project with `dx upload -r`: DESTINATION/mrseg-shard-I-of-N/ (and deletes the local copy). Individual-level results stay inside the project (nothing
# goes to storage outside the platform). The shards never share a scan, so every scan is in exactly one
# shard's tables, once; read them all at once with a glob (docs/deployment.md, "UK Biobank RAP").
# A shard's job that failed (or was terminated) uploaded nothing: run the script again with --only I.
#
# Needs the dx command (dx-toolkit), logged in with the project selected (`dx select`), and the Docker image
# of infra/Dockerfile saved into the project (`docker save mrseg-cohort:0.2.0 | gzip > ...; dx upload ...`).
set -euo pipefail

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "error: $*" >&2; exit 2; }

shards="" config="" image_file="" destination="" instance_type="" only="" priority="normal" dry_run=0
image="mrseg-cohort:0.2.0" shm="16g"
while [[ $# -gt 0 ]]; do
  case $1 in
    --shards) shards=${2:-}; shift 2 ;;
    --config) config=${2:-}; shift 2 ;;
    --image-file) image_file=${2:-}; shift 2 ;;
    --image) image=${2:-}; shift 2 ;;
    --destination) destination=${2:-}; shift 2 ;;
    --instance-type) instance_type=${2:-}; shift 2 ;;
    --only) only=${2:-}; shift 2 ;;
    --priority) priority=${2:-}; shift 2 ;;
    --shm-size) shm=${2:-}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $shards =~ ^[1-9][0-9]*$ ]] || die "--shards must be a whole number of at least 1, not '${shards}'"
[[ $config == /* ]] || die "--config must be the config's path in the project, from its root (/...), not '${config}'"
[[ $image_file == /* ]] || die "--image-file must be the Docker image's path in the project (/...), not '${image_file}'"
[[ $destination == /* ]] || die "--destination must be a folder of the project (/...), not '${destination}'"
[[ -n $instance_type ]] || die "--instance-type is required (a GPU instance type, e.g. mem2_ssd1_gpu1_x8)"
(( dry_run )) || command -v dx >/dev/null || die "no dx command: install dx-toolkit (pip install dxpy), then dx login"

selected=()
if [[ -n $only ]]; then
  IFS=, read -r -a selected <<< "$only"
  for i in "${selected[@]}"; do
    [[ $i =~ ^[0-9]+$ && $i -lt $shards ]] || die "--only: shard '$i' is not one of 0..$((shards - 1))"
  done
else
  for ((i = 0; i < shards; i++)); do selected+=("$i"); done
fi

image_name=${image_file##*/}
for i in "${selected[@]}"; do
  name="mrseg-shard-$i-of-$shards"
  # The job's command, run by bash on the instance (dx and docker are there); every path quoted for it.
  printf -v cmd '%s' "set -uo pipefail
out=\"\$HOME/mrseg-output/$name\"
docker load -i $(printf '%q' "$image_name") >/dev/null
rm -f $(printf '%q' "$image_name")
docker run --rm --gpus all --shm-size=$(printf '%q' "$shm") --user \"\$(id -u):\$(id -g)\" -e HOME=/tmp \\
  -v /mnt/project:/mnt/project:ro -v \"\$HOME:\$HOME\" \\
  $(printf '%q' "$image") mrseg-cohort run $(printf '%q' "/mnt/project$config") --shard $i/$shards \\
  --output \"\$out\" --no-progress
status=\$?
echo \"mrseg-cohort run ended with exit status \$status\"
if [[ -d \"\$out\" ]]; then
  dx upload -r \"\$out\" --destination $(printf '%q' "$destination/") --brief >/dev/null || exit 3
  rm -rf \"\$out\"
fi
[[ \$status -le 1 ]]"
  args=(run app-swiss-army-knife "-iin=$image_file" "-icmd=$cmd" --instance-type "$instance_type"
        --priority "$priority" --name "$name" --destination "$destination" --brief -y)
  if (( dry_run )); then
    printf '%q ' dx "${args[@]}"; echo
  else
    job=$(dx "${args[@]}")
    echo "shard $i/$shards: job $job"
  fi
done
