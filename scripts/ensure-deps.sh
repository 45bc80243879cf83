#!/usr/bin/env bash
# Installs, from Debian's packages, what building, testing and linting need and a
# fresh machine may lack. Does nothing for what is already there.
set -euo pipefail
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v pkg-config >/dev/null || need+=(pkg-config)
have_pkg libssl-dev || need+=(libssl-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
command -v groff >/dev/null || need+=(groff-base)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
command -v g++ >/dev/null || need+=(g++)
command -v psql >/dev/null || need+=(postgresql-client)
# GNU time: the benchmark's peak RSS of each child (see bench/bench.py, GNU_TIME).
[ -x /usr/bin/time ] || need+=(time)
# The README's Python producer runs in the tests: msgpack for the python3 on PATH
# (pip where that Python allows it, else Debian's package for the system one).
if ! python3 -c 'import msgpack' 2>/dev/null; then
  python3 -m pip install -q msgpack 2>/dev/null || need+=(python3-msgpack)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "ensure-deps: missing ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "ensure-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
