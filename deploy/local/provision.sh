#!/usr/bin/env bash
# Installs what the local services need when it is missing: PostgreSQL server binaries,
# a Java runtime and Maven (for the Kafka jars). Uses apt-get as root, else says what to do.
# `provision.sh images` also installs what building the container images offline needs
# (mmdebstrap, deploy/images/build.py); `provision.sh browser` the headless browser the viewer's
# tests drive (Debian's chromium and chromium-driver, tests/e2e/test_viewer.py).
set -euo pipefail

need=()
for extra in "$@"; do
  case "$extra" in
    images) command -v mmdebstrap >/dev/null || need+=(mmdebstrap) ;;
    browser)
      command -v chromium >/dev/null || need+=(chromium)
      command -v chromedriver >/dev/null || need+=(chromium-driver)
      ;;
    *) echo "provision.sh: unknown extra '$extra' (known: images, browser)" >&2; exit 2 ;;
  esac
done
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
  || [[ -n "${AUDIT_LOCAL_PG_BINDIR:-}" ]] || need+=(postgresql)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)

if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing: ${need[*]} — install them (Debian: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "[provision] installing ${need[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt-get or dpkg (an unattended upgrade, a parallel provision) may hold the locks for
# a while: wait for them up to 5 minutes rather than fail at once.
lock_wait=(-o DPkg::Lock::Timeout=300)
apt_get() {
  local tries=0
  until apt-get "${lock_wait[@]}" "$@"; do
    tries=$((tries + 1))
    if ((tries >= 3)); then
      return 1
    fi
    echo "[provision] apt-get $1 failed (a lock held elsewhere?); again in 10 s" >&2
    sleep 10
  done
}
apt_get update -q >/dev/null
# policy-rc.d stops the package from starting a system-wide cluster we would not use.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt_get install -y -q --no-install-recommends "${need[@]}" >/dev/null
