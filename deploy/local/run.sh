#!/usr/bin/env bash
# `make run`: the local services are up (make services); run the service in the foreground.
# Ctrl-C stops the service, then the services this run started.
set -euo pipefail
state_dir=$1
env_file=$2
cd "$(dirname "$0")/../.."
set -a
# shellcheck disable=SC1090
source "$env_file"
set +a
export AUDIT_LOG_FORMAT=${AUDIT_LOG_FORMAT:-text}

cleanup() {
  .venv/bin/python deploy/local/services.py down --state-dir "$state_dir" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

.venv/bin/course-audit migrate
if [[ -x deploy/local/demo.sh ]]; then
  bash deploy/local/demo.sh &
fi
.venv/bin/course-audit run
