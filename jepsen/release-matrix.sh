#!/usr/bin/env bash
# The release matrix (issue 8): every workload that must pass, on 5 members, under every fault
# class at once (a fault every 5 s, in turn), 60 s per run, about 10 minutes in all; prints one
# verdict per run and "N passed, N failed", and exits non-zero unless all passed.
#   jepsen/release-matrix.sh                      # Cairn, release build (built first)
#   jepsen/release-matrix.sh /usr/bin/etcd        # any binary with etcd's flags
#   jepsen/release-matrix.sh BIN --seed 7         # further flags go to every `cairn-jepsen test`
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --test
cargo build -p cairn-jepsen
if [ $# -gt 0 ]; then
    bin="$1"
    shift
else
    cargo build --release -p cairn-server --bin cairn
    bin="$CARGO_TARGET_DIR/release/cairn"
fi
faults=kill,pause,partition,partition-one-way,slow,flaky,compact,transfer-leader,defrag,member-replace,clock-skew,fsync-fail,lose-unsynced
passed=0
failed=0
for workload in register set append watch kv-robust lock-etcd-set; do
    if "$CARGO_TARGET_DIR/debug/cairn-jepsen" test --bin "$bin" --members 5 --workload "$workload" \
        --nemesis "$faults" --nemesis-interval-s 5 --time-limit-s 60 "$@"; then
        echo "PASS $workload"
        passed=$((passed + 1))
    else
        echo "FAIL $workload"
        failed=$((failed + 1))
    fi
done
echo "release matrix: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
