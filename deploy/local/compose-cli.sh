#!/usr/bin/env bash
# Prints the command that runs Docker Compose v2 here, for `make test-containers`.
#
# `docker compose` when the Docker CLI has the Compose plugin. Otherwise Compose v2 is built once
# from its Go module (the Go module proxy is reachable where image registries are not) into
# ~/.cache/course-audit/, like the Kafka jars, and that standalone binary is printed.
set -euo pipefail

COMPOSE_VERSION=v2.40.3
CACHE=${COURSE_AUDIT_CACHE:-$HOME/.cache/course-audit}
BIN="$CACHE/compose-$COMPOSE_VERSION/docker-compose"

if docker compose version >/dev/null 2>&1; then
  echo "docker compose"
  exit 0
fi
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "compose-cli: neither the Docker Compose plugin nor Go (to build Compose $COMPOSE_VERSION) is installed" >&2
  exit 1
fi
echo "[compose] building Docker Compose $COMPOSE_VERSION from its Go module into $BIN (once)" >&2
work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
# `go install` refuses a module whose go.mod has replace/exclude directives: build in its tree.
src=$(GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
mkdir -p "$(dirname "$BIN")"
(cd "$work/src" && CGO_ENABLED=0 go build -trimpath -o "$BIN.tmp" ./cmd >&2)
mv "$BIN.tmp" "$BIN"
echo "$BIN"
