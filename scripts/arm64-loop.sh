#!/usr/bin/env bash
# The deployed artifact runs: builds the arm64 bootstraps exactly as SAM does
# (`cargo lambda build --release --arm64`), runs the whole loop with them under
# qemu-aarch64-static (requests over HTTP, the batcher, the sandbox's signed callbacks, every
# fixture, final balances, `operator check` and the events on the bus: ./scripts/dev.sh demo with
# FUNCTIONS=arm64), then
# holds the AWS calls those binaries made against template.yaml (tests/tests/iam.rs: each must
# be granted; unused grants are the full suite's business). Free ports: runs beside anything.
#
#   ./scripts/arm64-loop.sh                    build once, run the loop
#   ARM64_REUSE=1 ./scripts/arm64-loop.sh      reuse target/lambda/*/bootstrap when present
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export FUNCTIONS=arm64
export DDB_PORT="$(free_port)" WATCH_PORT="$(free_port)" SANDBOX_PORT="$(free_port)" SECRETS_PORT="$(free_port)"
./scripts/dev.sh demo

calls="$LOCAL_DIR/stack-$WATCH_PORT/calls"
log "IAM: the calls the arm64 bootstraps made vs template.yaml ($calls)"
for f in withdrawal-request payout-batcher provider-webhook event-publisher; do
  sort -u "$calls/$f.calls" | sed "s|^|   $f: |"
done
CALL_LOG_DIR="$calls" IAM_CHECK_UNUSED=0 cargo test -q --workspace --test iam -- --ignored
ls -l target/lambda/*/bootstrap | awk '{ printf "   %s %.1f MB\n", $NF, $5 / 1048576 }'
echo "arm64 loop passed: the release arm64 bootstraps settled, rejected and returned, with every AWS call granted"
