#!/usr/bin/env bash
# Installs the system packages Cairn's build (and, with --test, its test suite) needs, if missing.
# Sourced by run.sh and test.sh; safe to run again.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)   # bindgen for RocksDB's C API
command -v g++ >/dev/null 2>&1 || need+=(g++)                   # RocksDB's C++ sources
if [[ "${1:-}" == "--test" ]]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)        # the differential-test oracle
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# One target directory outside the clone, so that every clone (and CI) builds RocksDB once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/cairn-target}"
