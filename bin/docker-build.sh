#!/usr/bin/env bash
# Build the palijudge image on NVIDIA's JAX container (see Dockerfile).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bin/docker-build.sh [--tag NAME] [--base IMAGE] [--no-cache] [-- DOCKER_BUILD_ARGS...]

Builds the palijudge image from the project root.

  --tag NAME     image name (default: palijudge:latest, or $PALIJUDGE_IMAGE)
  --base IMAGE   base image (default: the Dockerfile's pinned nvcr.io/nvidia/jax tag)
  --no-cache     rebuild every layer
  -h, --help     this help
  -- ARGS        passed to `docker build` as they are

Environment: DOCKER (default docker) is the engine command.
USAGE
}

die() {
  echo "docker-build.sh: $*" >&2
  exit 2
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${PALIJUDGE_IMAGE:-palijudge:latest}"
args=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --tag) (($# >= 2)) || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --base) (($# >= 2)) || die "--base needs a value"; args+=(--build-arg "BASE_IMAGE=$2"); shift 2 ;;
    --base=*) args+=(--build-arg "BASE_IMAGE=${1#*=}"); shift ;;
    --no-cache) args+=(--no-cache); shift ;;
    --) shift; args+=("$@"); break ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[[ -n "$tag" ]] || die "--tag must not be empty"

read -r -a docker <<<"${DOCKER:-docker}"
exec "${docker[@]}" build --file "$root/Dockerfile" --tag "$tag" ${args[@]+"${args[@]}"} "$root"
