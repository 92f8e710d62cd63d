#!/usr/bin/env bash
# Builds cairn and cairn-bench (release) and runs the side-by-side comparison with etcd:
#   benches/compare.sh                                    # cairn-bench compare, default settings
#   benches/compare.sh compare --members 3 --duration 20s
#   benches/compare.sh compare --workloads watch-fanout,watch-spread
#   benches/compare.sh compare --workloads lease-keepalive,lease-expiry
#   benches/compare.sh compare --workloads fill --fill-keys 1000000   # peak RSS after 1M keys
#   benches/compare.sh snapshot-catchup --size-mib 1024
# Installs etcd-server/etcd-client (the reference) and the build's system packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
cairn_target="$CARGO_TARGET_DIR"
cargo build --release -p cairn-server --bin cairn
# cairn-bench builds in a target directory of its own, so that its feature set never
# invalidates the server's (RocksDB) build.
CARGO_TARGET_DIR=/var/tmp/cairn-bench-target cargo build --release -p cairn-bench
command="${1:-compare}"
shift || true
case "$command" in
compare | snapshot-catchup) ;;
*)
    echo "usage: $0 [compare|snapshot-catchup] [flags]" >&2
    exit 2
    ;;
esac
exec /var/tmp/cairn-bench-target/release/cairn-bench "$command" \
    --cairn-bin "$cairn_target/release/cairn" "$@"
