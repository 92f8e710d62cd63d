#!/usr/bin/env bash
# Runs a local cluster of N Cairn members (default 3, at most 5) on 127.0.0.1, laid out like etcd's
# Procfile: member infraI serves clients on port I2379 and peers on I2380 (infra1: 2379/2380,
# infra2: 22379/22380, ...). Data and logs go to ./local-cluster/ (kept across runs: a second run
# restarts the same cluster). Ctrl-C stops every member.
set -euo pipefail
cd "$(dirname "$0")/.."
members="${1:-3}"
if ! [[ "$members" =~ ^[1-5]$ ]]; then
    echo "usage: $0 [members: 1-5]" >&2
    exit 2
fi
source scripts/setup.sh
cargo build --release -p cairn-server --bin cairn
bin="$CARGO_TARGET_DIR/release/cairn"

port() { if [ "$1" = 1 ]; then echo "$2"; else echo "$1$2"; fi; }
initial=""
for i in $(seq 1 "$members"); do
    initial+="${initial:+,}infra$i=http://127.0.0.1:$(port "$i" 2380)"
done
mkdir -p local-cluster
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop INT TERM EXIT
endpoints=""
for i in $(seq 1 "$members"); do
    client="http://127.0.0.1:$(port "$i" 2379)"
    peer="http://127.0.0.1:$(port "$i" 2380)"
    endpoints+="${endpoints:+,}$client"
    "$bin" --name "infra$i" --data-dir "local-cluster/infra$i" \
        --listen-client-urls "$client" --advertise-client-urls "$client" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$initial" --initial-cluster-token local-cluster \
        --initial-cluster-state new 2>>"local-cluster/infra$i.log" &
    pids+=("$!")
done
echo "cluster of $members running; logs in local-cluster/*.log. Try:"
echo "  etcdctl --endpoints=$endpoints endpoint status -w table"
echo "  etcdctl --endpoints=$endpoints member list -w table"
wait
