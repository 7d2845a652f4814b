#!/usr/bin/env bash
# A Docker engine for `make test-containers`, as provision.sh does for PostgreSQL.
#
#   docker-engine.sh start STATE_FILE   a running engine: the one that answers, or, as root on
#                                       Debian, dockerd from the docker.io package (installed
#                                       when missing), started here; STATE_FILE records its pid
#   docker-engine.sh stop STATE_FILE    stops the dockerd that `start` started (nothing else)
set -euo pipefail

cmd=${1:-}
state=${2:-}
if [[ -z "$cmd" || -z "$state" ]]; then
  echo "usage: docker-engine.sh start|stop STATE_FILE" >&2
  exit 2
fi
say() { printf '[docker-engine] %s\n' "$*" >&2; }

answers() { docker info >/dev/null 2>&1; }

case "$cmd" in
start)
  if answers; then
    say "a Docker engine answers; using it"
    exit 0
  fi
  if [[ $(id -u) -ne 0 || ! -f /etc/debian_version ]]; then
    say "no Docker engine answers, and only root on Debian may install and start one here"
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing Debian's docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >&2; }
  fi
  if ! command -v docker >/dev/null 2>&1; then
    say "the docker client is missing after installing docker.io"
    exit 1
  fi
  log="${state%.*}.log"
  say "starting dockerd (log: $log)"
  nohup dockerd >"$log" 2>&1 &
  echo $! >"$state"
  for _ in $(seq 1 120); do
    if answers; then
      say "dockerd answers (pid $(cat "$state"))"
      exit 0
    fi
    if ! kill -0 "$(cat "$state")" 2>/dev/null; then
      say "dockerd exited; last lines of $log:"
      tail -n 20 "$log" >&2
      rm -f "$state"
      exit 1
    fi
    sleep 0.5
  done
  say "dockerd did not answer within 60 s; see $log"
  exit 1
  ;;
stop)
  [[ -f "$state" ]] || exit 0
  pid=$(cat "$state")
  rm -f "$state"
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the dockerd started for this run (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  ;;
*)
  echo "usage: docker-engine.sh start|stop STATE_FILE" >&2
  exit 2
  ;;
esac
