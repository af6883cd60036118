#!/usr/bin/env bash
# Build a uft image with BuildKit from the repository root:  docker/build.sh cpu|cuda TAG
# First stages the build inputs that are not in git (docker/stage.sh: the bundled MNIST, and a
# local torch wheel if pip's find-links has one; then torch's dependencies come from PyPI unless
# TORCH_INDEX_URL says otherwise).
# Env (all optional):
#   BASE_IMAGE       base image (default: the Dockerfile's public python/CUDA image;
#                    docker/build-base.sh builds an equivalent one from the Debian archive)
#   TORCH_INDEX_URL  index for torch and its dependencies (default: the Dockerfile's)
#   EXTRA_CA         CA bundle file for a TLS-intercepting proxy: a BuildKit secret, never in the image
#   DOCKER           a docker client with BuildKit (default: the first of docker, /usr/bin/docker
#                    whose `build` takes --secret)
#   DOCKER_BUILD_ARGS  extra `docker build` arguments (e.g. --no-cache)
set -euo pipefail
cd "$(dirname "$0")/.."

flavour=${1:?usage: docker/build.sh cpu|cuda TAG}
tag=${2:?usage: docker/build.sh cpu|cuda TAG}
dockerfile=docker/Dockerfile.$flavour
[[ -f $dockerfile ]] || { echo "build: no $dockerfile (flavour is cpu or cuda)" >&2; exit 1; }

if [[ -z ${DOCKER:-} ]]; then
  for c in docker /usr/bin/docker; do
    if command -v "$c" >/dev/null && DOCKER_BUILDKIT=1 "$c" build --help 2>/dev/null | grep -q -- --secret; then
      DOCKER=$c
      break
    fi
  done
fi
[[ -n ${DOCKER:-} ]] || { echo "build: no docker client with BuildKit (install docker-buildx, or Debian's docker.io)" >&2; exit 1; }

staged=$(docker/stage.sh "$flavour")
if [[ -n $staged ]]; then
  echo "build: torch from $staged" >&2
  : "${TORCH_INDEX_URL:=https://pypi.org/simple}"
fi

args=(--network=host -f "$dockerfile" -t "$tag")
[[ -n ${BASE_IMAGE:-} ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -n ${TORCH_INDEX_URL:-} ]] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
if [[ -n ${EXTRA_CA:-} ]]; then
  [[ -s $EXTRA_CA ]] || { echo "build: EXTRA_CA=$EXTRA_CA is not a readable CA file" >&2; exit 1; }
  args+=(--secret "id=extra_ca,src=$EXTRA_CA")
fi
# shellcheck disable=SC2086
DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" ${DOCKER_BUILD_ARGS:-} .
