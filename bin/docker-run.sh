#!/usr/bin/env bash
# Run a command in the palijudge container: GPU, the project folder mounted read-write,
# Kaggle credentials read-only, files created as the calling user. Works from a Linux
# shell and from MSYS2/Git Bash on Windows (Docker Desktop).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: bin/docker-run.sh [OPTIONS] [--] [COMMAND [ARGS...]]

Runs COMMAND (default: an interactive bash) in the palijudge image. The project
folder is mounted read-write at /workspace/palijudge (the image's code, data
folders and your own files such as data.tsv or out.tsv alike), and COMMAND runs
in the folder you called from when that is inside the project (else the root).

  bin/docker-run.sh make train SET=set1
  bin/docker-run.sh python playground/03-do_learn.py -d set1 -w trained-set1
  bin/docker-run.sh python playground/13-inference.py -l checkpoints/a.npz -d data.tsv -i imgs -o out.tsv
  bin/docker-run.sh -v /data/ads:/data:ro python playground/04-validate.py -m ... /data/x.jsonl

options (before COMMAND; everything from COMMAND on is passed through):
  --image NAME      image (default: palijudge:latest, or $PALIJUDGE_IMAGE)
  --gpus SPEC       docker --gpus value (default: all)
  --no-gpu          run without a GPU (JAX falls back to CPU)
  --project DIR     project folder to mount (default: this repo)
  -v, --volume HOST:CONTAINER[:ro]
                    mount another folder (repeatable); HOST may be relative
  --kaggle FILE     kaggle.json to mount read-only (default: ~/.kaggle/kaggle.json or
                    $KAGGLE_CONFIG_DIR/kaggle.json when it exists)
  --no-kaggle       mount no Kaggle credentials
  --memlock auto|on|off
                    lift the locked-memory limit (--ulimit memlock=-1, as NVIDIA advises
                    for GPU transfers). auto (default): asked for, and dropped with a
                    note where the engine may not raise it (rootless or restricted
                    engines: "error setting rlimit type 8"); on: required; off: never
  --platform-allocator
                    XLA_PYTHON_CLIENT_ALLOCATOR=platform (frees GPU memory at once, much
                    slower; the same as the scripts' --platform-allocator). Off by default.
  --tty, --no-tty   force a terminal on or off (default: on when stdin and stdout are
                    terminals; under mintty through winpty when it is installed)
  -e, --env VAR[=V] set (or pass through) an environment variable
  -h, --help        this help

KAGGLE_USERNAME, KAGGLE_KEY, KAGGLE_API_TOKEN and HF_TOKEN are passed through
when set. Environment: DOCKER (default docker) is the engine command. Under
MSYS2/Git Bash (MSYSTEM set) host paths are given to Docker as C:/... and
container paths are protected from MSYS path conversion.
USAGE
}

die() {
  echo "docker-run.sh: $*" >&2
  exit 2
}

need() {
  (($1 >= 2)) || die "$2 needs a value (see --help)"
}

msys=0
[[ -n "${MSYSTEM:-}" ]] && msys=1

# A host path as Docker Desktop on Windows wants it (C:/x/y); unchanged elsewhere.
host_path() {
  if ((msys)) && command -v cygpath >/dev/null 2>&1; then
    cygpath -m "$1"
  else
    printf '%s\n' "$1"
  fi
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${PALIJUDGE_IMAGE:-palijudge:latest}"
project="$root"
gpus="all"
kaggle="${KAGGLE_CONFIG_DIR:-${HOME:-/nonexistent}/.kaggle}/kaggle.json"
kaggle_given=0
tty="auto"
memlock="auto"
volumes=()
envs=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --image) need $# "$1"; image="$2"; shift 2 ;;
    --memlock) need $# "$1"; memlock="$2"; shift 2 ;;
    --gpus) need $# "$1"; gpus="$2"; shift 2 ;;
    --no-gpu) gpus=""; shift ;;
    --project) need $# "$1"; project="$2"; shift 2 ;;
    -v | --volume) need $# "$1"; volumes+=("$2"); shift 2 ;;
    --kaggle) need $# "$1"; kaggle="$2"; kaggle_given=1; shift 2 ;;
    --no-kaggle) kaggle=""; shift ;;
    --platform-allocator) envs+=(--env XLA_PYTHON_CLIENT_ALLOCATOR=platform); shift ;;
    --tty) tty="yes"; shift ;;
    --no-tty) tty="no"; shift ;;
    -e | --env) need $# "$1"; envs+=(--env "$2"); shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) break ;;
  esac
done

[[ -n "$image" ]] || die "--image needs a name, got an empty one (see --help)"
case "$memlock" in auto | on | off) ;; *) die "--memlock wants auto, on or off, got: $memlock" ;; esac
[[ -d "$project" ]] || die "project folder not found: $project"
project="$(cd "$project" && pwd)"
if ((kaggle_given)) && [[ ! -f "$kaggle" ]]; then
  die "Kaggle credentials not found: $kaggle"
fi

work=/workspace/palijudge
here="$(pwd)"
workdir="$work"
case "$here/" in
  "$project"/*) workdir="$work${here#"$project"}" ;;  # The same place, inside the container.
esac

read -r -a docker <<<"${DOCKER:-docker}"

# Whether the engine may raise the locked-memory limit: a container that only runs `true`
# is started with it (about a second). Only a refusal of the limit itself drops it; any
# other failure (no image, no engine) is left for the real run to report.
if [[ "$memlock" == auto ]]; then
  if probe=$("${docker[@]}" run --rm --ulimit memlock=-1 --entrypoint true "$image" 2>&1 >/dev/null); then
    memlock=on
  elif [[ "$probe" == *rlimit* ]]; then
    echo "docker-run.sh: this engine may not raise the locked-memory limit; running without" \
      "--ulimit memlock=-1 (GPU transfers may be slower; --memlock off skips this check)" >&2
    memlock=off
  else
    memlock=on
  fi
fi

args=(run --rm --init --ipc=host --ulimit stack=67108864 --workdir "$workdir"
  --env HOME=/tmp --env "KAGGLEHUB_CACHE=$work/cache/kagglehub"
  --env "HF_HOME=$work/cache/huggingface")
if [[ "$memlock" == on ]]; then
  args+=(--ulimit memlock=-1)
fi
if ((!msys)); then
  args+=(--user "$(id -u):$(id -g)")  # Docker Desktop on Windows maps ownership itself.
fi
if [[ -n "$gpus" ]]; then
  args+=(--gpus "$gpus")
fi

launcher=()
if [[ "$tty" == auto ]]; then
  tty="no"
  if [[ -t 0 && -t 1 ]]; then
    tty="yes"
  elif ((msys)) && [[ "${TERM_PROGRAM:-}" == mintty ]] && command -v winpty >/dev/null 2>&1; then
    tty="yes"  # mintty's pipes are not terminals to docker.exe; winpty bridges them.
    launcher=(winpty)
  fi
fi
if [[ "$tty" == yes ]]; then
  args+=(--interactive --tty)
else
  args+=(--interactive)
fi

for dir in cache dataset checkpoints experiments; do
  mkdir -p "$project/$dir"  # Made here, so they belong to you and not to root.
done
args+=(--volume "$(host_path "$project"):$work")
for spec in ${volumes[@]+"${volumes[@]}"}; do
  if [[ "$spec" =~ ^([A-Za-z]:[/\\][^:]*):(.*)$ ]]; then  # C:/data:/data
    src="${BASH_REMATCH[1]}" rest="${BASH_REMATCH[2]}"
  else
    src="${spec%%:*}" rest="${spec#*:}"
  fi
  [[ "$spec" == *:* && -n "$src" && "$rest" == /* ]] || die "--volume wants HOST:CONTAINER[:ro], got: $spec"
  if [[ "$src" != [A-Za-z]:* ]]; then  # (A Windows path is Docker Desktop's to check.)
    [[ -e "$src" ]] || die "--volume folder not found: $src"
    if [[ -d "$src" ]]; then
      src="$(cd "$src" && pwd)"
    else
      src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
    fi
    src="$(host_path "$src")"
  fi
  args+=(--volume "$src:$rest")
done
if [[ -n "$kaggle" && -f "$kaggle" ]]; then
  kfile="$(cd "$(dirname "$kaggle")" && pwd)/$(basename "$kaggle")"
  args+=(--volume "$(host_path "$kfile"):/run/secrets/kaggle/kaggle.json:ro"
    --env KAGGLE_CONFIG_DIR=/run/secrets/kaggle)
fi
for var in KAGGLE_USERNAME KAGGLE_KEY KAGGLE_API_TOKEN HF_TOKEN; do
  if [[ -n "${!var:-}" ]]; then
    args+=(--env "$var")  # By name only: the value stays out of the process list.
  fi
done

if ((msys)); then
  # MSYS2 would rewrite /workspace/... into C:/msys64/workspace/...: host paths above are
  # already converted, so conversion is switched off for everything passed to docker.
  export MSYS_NO_PATHCONV=1 MSYS2_ARG_CONV_EXCL='*'
fi
exec ${launcher[@]+"${launcher[@]}"} "${docker[@]}" "${args[@]}" ${envs[@]+"${envs[@]}"} "$image" "$@"
