#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, integration, differential (against
# real etcd 3.4.23) and crash tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
cargo fmt --all -- --check
cargo test --workspace
