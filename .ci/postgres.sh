#!/usr/bin/env bash
# A throwaway PostgreSQL server for the shared-study tests (CI and tests/test_experiments_tune.py).
#
#   .ci/postgres.sh start DIR   # initdb in DIR, start on a free loopback port, print its URL
#   .ci/postgres.sh stop DIR    # stop it at once and remove its data (the caller removes DIR)
#
# Binaries: $PG_BIN, else the newest /usr/lib/postgresql/*/bin (Debian's packages).
# Exit 3 when there are none. As root the server runs as the `postgres` user (or nobody),
# since PostgreSQL refuses to run as root; its data then lives in a temp folder of that user's
# (DIR, e.g. pytest's 0700 tmp_path, may be closed to it), named in DIR/pgdata.
# Trust authentication, loopback only, no fsync: for tests only.
set -euo pipefail

usage() { echo "usage: .ci/postgres.sh start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)

bin_dir() {
  if [ -n "${PG_BIN:-}" ]; then echo "$PG_BIN"; return; fi
  local found
  found=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
  [ -n "$found" ] && dirname "$found"
}

as_owner() {  # runs "$@" as the server's user
  if [ "$(id -u)" -ne 0 ]; then "$@"; return; fi
  local user=postgres
  id -u "$user" >/dev/null 2>&1 || user=nobody
  runuser -u "$user" -- "$@"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

BIN=$(bin_dir || true)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  echo "no PostgreSQL binaries (set PG_BIN, or apt-get install postgresql)" >&2
  exit 3
fi

case $cmd in
  start)
    data=$(as_owner mktemp -d "${TMPDIR:-/tmp}/palijudge-pg.XXXXXX")
    echo "$data" >"$dir/pgdata"
    as_owner "$BIN/initdb" -D "$data/data" -U palijudge --auth=trust -E UTF8 --no-sync \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    for _ in 1 2 3; do  # another process may take the port between free_port and the start
      port=$(free_port)
      if as_owner "$BIN/pg_ctl" -D "$data/data" -l "$data/server.log" -w -t 30 \
          -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
          start >/dev/null; then
        as_owner "$BIN/createdb" -h 127.0.0.1 -p "$port" -U palijudge palijudge
        echo "$port" >"$dir/port"
        echo "postgresql://palijudge@127.0.0.1:$port/palijudge"
        exit 0
      fi
    done
    cat "$data/server.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$dir/pgdata" ] || exit 0
    data=$(cat "$dir/pgdata")
    as_owner "$BIN/pg_ctl" -D "$data/data" -m immediate -w stop >/dev/null 2>&1 || true
    case $data in */palijudge-pg.*) rm -rf "$data" ;; esac
    rm -f "$dir/pgdata"
    ;;
  *) usage ;;
esac
