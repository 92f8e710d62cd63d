#!/usr/bin/env bash
# Runs one Patroni node (PostgreSQL managed by Patroni) whose DCS is a Cairn cluster, in the
# foreground; Ctrl-C stops it (Patroni stops its PostgreSQL). The node's data, socket and log stay
# in DIR, so a second run restarts the same node. Example, next to ./scripts/local-cluster.sh 3:
#
#   scripts/patroni/node.sh pg1 /tmp/patroni/pg1 8009 5433 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
#   scripts/patroni/node.sh pg2 /tmp/patroni/pg2 8010 5434 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
#   patronictl -c /tmp/patroni/pg1/patroni.yml list
#
# Needs the Debian packages patroni and postgresql. PostgreSQL refuses to run as root, so as root
# the node runs as $PATRONI_USER (default postgres). Timings: TTL, LOOP_WAIT, RETRY_TIMEOUT
# (seconds; defaults 15, 2, 6); the cluster's name: SCOPE (default cairn-demo).
set -euo pipefail
if (($# != 5)); then
    echo "usage: $0 NAME DIR REST_PORT PG_PORT CAIRN_HOSTS (host:port,...)" >&2
    exit 2
fi
name=$1 dir=$2 rest_port=$3 pg_port=$4 hosts=$5
here="$(cd "$(dirname "$0")" && pwd)"
bin_dir="${PG_BIN_DIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
if [[ -z "$bin_dir" || ! -x "$bin_dir/postgres" ]]; then
    echo "PostgreSQL not found (apt-get install postgresql, or set PG_BIN_DIR)" >&2
    exit 1
fi
command -v patroni >/dev/null || { echo "patroni not found (apt-get install patroni)" >&2; exit 1; }

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
chmod 700 "$dir"
sed -e "s|@SCOPE@|${SCOPE:-cairn-demo}|" -e "s|@NAME@|$name|" \
    -e "s|@REST_PORT@|$rest_port|g" -e "s|@PG_PORT@|$pg_port|g" -e "s|@ETCD_HOSTS@|$hosts|" \
    -e "s|@TTL@|${TTL:-15}|" -e "s|@LOOP_WAIT@|${LOOP_WAIT:-2}|" \
    -e "s|@RETRY_TIMEOUT@|${RETRY_TIMEOUT:-6}|" \
    -e "s|@DIR@|$dir|g" -e "s|@BIN_DIR@|$bin_dir|" \
    "$here/patroni.yml.in" >"$dir/patroni.yml"

if ((EUID == 0)); then
    user="${PATRONI_USER:-postgres}"
    chown -R "$user:" "$dir"
    exec runuser -u "$user" -- patroni "$dir/patroni.yml"
fi
exec patroni "$dir/patroni.yml"
