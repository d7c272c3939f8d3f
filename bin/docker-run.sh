#!/usr/bin/env bash
# Run a command in the palijudge container: GPU, the project's data folders mounted,
# Kaggle credentials read-only, files created as the calling user.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bin/docker-run.sh [OPTIONS] [--] [COMMAND [ARGS...]]

Runs COMMAND (default: an interactive bash) in the palijudge image, in
/workspace/palijudge, with cache/, dataset/, checkpoints/ and experiments/ of the
project mounted read-write and files created as you (--user $(id -u):$(id -g)).

  bin/docker-run.sh make train SET=set1
  bin/docker-run.sh python playground/03-do_learn.py -d set1 -w trained-set1
  bin/docker-run.sh python playground/06-tune.py run --trials 2 --cv cv5

options (before COMMAND; everything from COMMAND on is passed through):
  --image NAME      image (default: palijudge:latest, or $PALIJUDGE_IMAGE)
  --gpus SPEC       docker --gpus value (default: all)
  --no-gpu          run without a GPU (JAX falls back to CPU)
  --project DIR     project folder whose data folders are mounted (default: this repo)
  --kaggle FILE     kaggle.json to mount read-only (default: ~/.kaggle/kaggle.json or
                    $KAGGLE_CONFIG_DIR/kaggle.json when it exists)
  --no-kaggle       mount no Kaggle credentials
  --source          also mount src/ and playground/ read-only (edit without rebuilding)
  -e, --env VAR[=V] set (or pass through) an environment variable
  -h, --help        this help

KAGGLE_USERNAME, KAGGLE_KEY, KAGGLE_API_TOKEN and HF_TOKEN are passed through
when set. Environment: DOCKER (default docker) is the engine command.
USAGE
}

die() {
  echo "docker-run.sh: $*" >&2
  exit 2
}

need() {
  (($1 >= 2)) || die "$2 needs a value (see --help)"
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${PALIJUDGE_IMAGE:-palijudge:latest}"
project="$root"
gpus="all"
kaggle="${KAGGLE_CONFIG_DIR:-${HOME:-/nonexistent}/.kaggle}/kaggle.json"
kaggle_given=0
source_mount=0
envs=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --image) need $# "$1"; image="$2"; shift 2 ;;
    --gpus) need $# "$1"; gpus="$2"; shift 2 ;;
    --no-gpu) gpus=""; shift ;;
    --project) need $# "$1"; project="$2"; shift 2 ;;
    --kaggle) need $# "$1"; kaggle="$2"; kaggle_given=1; shift 2 ;;
    --no-kaggle) kaggle=""; shift ;;
    --source) source_mount=1; shift ;;
    -e | --env) need $# "$1"; envs+=(--env "$2"); shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) break ;;
  esac
done

[[ -d "$project" ]] || die "project folder not found: $project"
project="$(cd "$project" && pwd)"
if ((kaggle_given)) && [[ ! -f "$kaggle" ]]; then
  die "Kaggle credentials not found: $kaggle"
fi

work=/workspace/palijudge
args=(run --rm --init --user "$(id -u):$(id -g)" --ipc=host
  --ulimit memlock=-1 --ulimit stack=67108864 --workdir "$work"
  --env HOME=/tmp --env "KAGGLEHUB_CACHE=$work/cache/kagglehub"
  --env "HF_HOME=$work/cache/huggingface")
if [[ -n "$gpus" ]]; then
  args+=(--gpus "$gpus")
fi
if [[ -t 0 && -t 1 ]]; then
  args+=(--interactive --tty)
else
  args+=(--interactive)
fi
for dir in cache dataset checkpoints experiments; do
  mkdir -p "$project/$dir"  # Made here, so they belong to you and not to root.
  args+=(--volume "$project/$dir:$work/$dir")
done
if [[ -n "$kaggle" && -f "$kaggle" ]]; then
  args+=(--volume "$(cd "$(dirname "$kaggle")" && pwd)/$(basename "$kaggle"):/run/secrets/kaggle/kaggle.json:ro"
    --env KAGGLE_CONFIG_DIR=/run/secrets/kaggle)
fi
for var in KAGGLE_USERNAME KAGGLE_KEY KAGGLE_API_TOKEN HF_TOKEN; do
  if [[ -n "${!var:-}" ]]; then
    args+=(--env "$var")  # By name only: the value stays out of the process list.
  fi
done
if ((source_mount)); then
  args+=(--volume "$project/src:$work/src:ro" --volume "$project/playground:$work/playground:ro")
fi

read -r -a docker <<<"${DOCKER:-docker}"
exec "${docker[@]}" "${args[@]}" ${envs[@]+"${envs[@]}"} "$image" "$@"
