#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info` (idempotent; CI runs it as root on a fresh machine).
# Installs Debian's docker.io (+ debootstrap for build-base.sh) when missing, then starts `dockerd`
# with its default flags in the background. Logs: ${DOCKERD_LOG:-/var/log/uft-dockerd.log}.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
if ((${#need[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "ensure-engine: ${need[*]} missing and not root: install them (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "ensure-engine: apt-get install ${need[*]} …" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  if [[ $(id -u) != 0 ]]; then
    echo "ensure-engine: no Docker engine is running and only root can start dockerd" >&2
    exit 1
  fi
  echo "ensure-engine: starting dockerd …" >&2
  nohup dockerd >"${DOCKERD_LOG:-/var/log/uft-dockerd.log}" 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "ensure-engine: dockerd did not answer within 60 s: see ${DOCKERD_LOG:-/var/log/uft-dockerd.log}" >&2
exit 1
