#!/usr/bin/env bash
# Benchmarks (not tests): DynamoDB round trips per lifecycle step, handler overhead, batching
# 10,000 pending, events out (moto's EventBridge), and the release binaries. Starts DynamoDB Local on a free port, builds in
# release, prints one report (also written to target/bench-report.md).
#   BENCH_N (10000), BENCH_SAMPLES (400), BENCH_ONLY=batching|events (one section alone);
#   --no-arm64 skips `cargo lambda build --release --arm64`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_dynamodb_local
if [ "${1:-}" != "--no-arm64" ]; then
  ensure_cargo_lambda
  rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
  log "cargo lambda build --release --arm64 (bootstrap sizes)"
  cargo lambda build --release --arm64 --bin withdrawal-request --bin payout-batcher --bin provider-webhook --bin event-publisher
fi
log "cargo build --release"
cargo build --release -p bench -p withdrawal-request -p payout-batcher -p provider-webhook -p event-publisher
port="$(free_port)"
start_dynamodb_local "$port" "$LOCAL_DIR/dynamodb-bench.log"
trap 'stop_group "$DDB_PID"' EXIT
# EventBridge and SQS for the events section.
ensure_moto
moto_port="$(free_port)"
start_moto "$moto_port" "$LOCAL_DIR/moto-bench.log"
trap 'stop_group "$DDB_PID" "$MOTO_PID"' EXIT
DYNAMODB_ENDPOINT="http://127.0.0.1:$port" MOTO_ENDPOINT="http://127.0.0.1:$moto_port" \
  SECRETS_ENDPOINT="http://127.0.0.1:$moto_port" ./target/release/bench
