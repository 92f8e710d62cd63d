#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration, differential (against
# real etcd 3.4.23) and crash tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
cargo fmt --all -- --check
# The server with deliberate bugs, for cairn-jepsen's self-tests (jepsen/tests/injected_bugs.rs);
# the test build below puts the real `cairn` back in place.
cargo build -p cairn-server --features failpoints --bin cairn
cp "${CARGO_TARGET_DIR:-target}/debug/cairn" "${CARGO_TARGET_DIR:-target}/debug/cairn-failpoints"
cargo test --workspace
