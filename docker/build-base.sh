#!/usr/bin/env bash
# Build a Python base image from the Debian archive, equivalent to the public
# python:3.11-slim-bookworm for our Dockerfiles, for machines that cannot pull from a registry:
#   debootstrap --variant=minbase bookworm + python3 python3-venv python3-pip ca-certificates
#   python-is-python3, then `docker import`.
# Usage: docker/build-base.sh [TAG]   (default uft-base:bookworm; FORCE=1 rebuilds an existing tag)
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm).
# Needs root (debootstrap) and a running engine (docker/ensure-engine.sh). Prints the tag.
set -euo pipefail

TAG=${1:-uft-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,python-is-python3

if [[ -z ${FORCE:-} ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: debootstrap missing: run docker/ensure-engine.sh (or apt-get install debootstrap)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "build-base: debootstrap needs root" >&2; exit 1; }

root=$(mktemp -d -t uft-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "build-base: debootstrap $SUITE from $MIRROR …" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; echo "build-base: debootstrap failed (full log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
# What an image does not need: package caches and lists, docs, man pages, locales but C.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/tmp/*
find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
version=$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "debootstrap --variant=minbase $SUITE + ${PACKAGES//,/ } (Python $version)" \
  - "$TAG" >/dev/null
echo "build-base: $TAG (Python $version, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
echo "$TAG"
