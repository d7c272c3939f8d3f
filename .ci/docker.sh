#!/usr/bin/env bash
# A container engine and a local base image for the container test (CI and tests/test_container.py).
#
#   .ci/docker.sh start DIR   # engine up (installed and started as root if missing), base image
#                             # built, a non-root user who may use the engine; prints 3 lines:
#                             #   base=IMAGE  user=NAME (or empty)  started=yes|no
#   .ci/docker.sh stop DIR    # stops the engine if `start DIR` started it
#
# No registry is reachable here, so the base is made locally: Debian bookworm by debootstrap
# (python3, venv, pip, make, git, ca-certificates) with the host's CA certificates added, so
# that pip inside the image reaches the package index the host reaches (a proxy that
# re-signs TLS included). The project image is then `bin/docker-build.sh --base IMAGE`.
# The NVIDIA base stays the default for users; this one is for testing.
# Exit 3 when no engine can be had (not root, no apt-get, or the engine does not start).
set -euo pipefail

usage() { echo "usage: .ci/docker.sh start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
BASE=${PALIJUDGE_BASE_IMAGE:-palijudge-base:bookworm}
CI_USER=palijudge-ci
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=0
[ "$(id -u)" -eq 0 ] && root=1

say() { echo "docker.sh: $*" >&2; }

install_missing() {  # Debian's engine and debootstrap, as root
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  [ ${#need[@]} -eq 0 ] && return 0
  ((root)) && command -v apt-get >/dev/null || { say "cannot install ${need[*]}"; return 3; }
  say "installing ${need[*]} (Debian packages)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${need[@]}"; } >"$dir/apt.log" 2>&1 \
    || { tail -n 5 "$dir/apt.log" >&2; return 3; }
}

start_engine() {
  docker info >/dev/null 2>&1 && { echo no >"$dir/started"; return 0; }
  ((root)) || { say "no engine running and not root: cannot start one"; return 3; }
  install_missing
  say "starting dockerd (log: $dir/dockerd.log)"
  dockerd --pidfile "$dir/dockerd.pid" >"$dir/dockerd.log" 2>&1 &
  echo yes >"$dir/started"
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  tail -n 20 "$dir/dockerd.log" >&2
  say "dockerd did not answer within 60 s"
  return 3
}

build_base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return 0
  ((root)) || { say "base image $BASE missing and not root: cannot debootstrap"; return 3; }
  install_missing
  local rootfs="$dir/rootfs"
  say "building $BASE: debootstrap bookworm from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,make,git,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$dir/debootstrap.log" 2>&1 \
    || { tail -n 20 "$dir/debootstrap.log" >&2; return 3; }
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/local/share/ca-certificates/host.crt"
  chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # pip inside: the system bundle (with the host's certificates), not pip's own certifi.
  tar -C "$rootfs" -c . | docker import -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
}

ci_user() {  # A non-root caller, to check that files made in the container belong to the caller
  ((root)) || { id -un; return 0; }
  getent group docker >/dev/null || groupadd --system docker
  id -u "$CI_USER" >/dev/null 2>&1 || useradd --no-create-home --shell /bin/bash -G docker "$CI_USER"
  # The engine's socket: group docker may use it (dockerd started by hand may leave it root-only).
  chgrp docker /var/run/docker.sock 2>/dev/null && chmod g+rw /var/run/docker.sock 2>/dev/null
  echo "$CI_USER"
}

case $cmd in
  start)
    start_engine
    build_base
    user=$(ci_user || true)
    echo "base=$BASE"
    echo "user=$user"
    echo "started=$(cat "$dir/started")"
    ;;
  stop)
    if [ "$(cat "$dir/started" 2>/dev/null)" = yes ] && [ -f "$dir/dockerd.pid" ]; then
      pid=$(cat "$dir/dockerd.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/started"
    ;;
  *) usage ;;
esac
