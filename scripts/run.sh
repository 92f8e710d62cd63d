#!/usr/bin/env bash
# Builds and runs one Cairn member with etcd's defaults: clients on http://localhost:2379,
# data in ./default.etcd. Extra arguments are passed to `cairn` (etcd's flags).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p cairn-server --bin cairn
exec "$CARGO_TARGET_DIR/release/cairn" "$@"
