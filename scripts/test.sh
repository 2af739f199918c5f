#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real DynamoDB Local and a Secrets
# Manager emulator (moto's server) that this script installs (first run) and starts on free ports.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_dynamodb_local
ensure_moto
port="$(free_port)"
mkdir -p "$LOCAL_DIR"
log "Starting DynamoDB Local on port $port"
start_dynamodb_local "$port" "$LOCAL_DIR/dynamodb-test.log"
trap 'stop_group "$DDB_PID"' EXIT
export DYNAMODB_ENDPOINT="http://127.0.0.1:$port"
secrets_port="$(free_port)"
log "Starting Secrets Manager (moto) on port $secrets_port"
start_moto "$secrets_port" "$LOCAL_DIR/moto-test.log"
trap 'stop_group "$DDB_PID" "$MOTO_PID"' EXIT
export SECRETS_ENDPOINT="http://127.0.0.1:$secrets_port"

# Every AWS call each function's code makes is recorded here, then held against template.yaml.
export CALL_LOG_DIR="$ROOT/target/calls"
rm -rf "$CALL_LOG_DIR"

log "cargo test --workspace"
out="$LOCAL_DIR/test-output.log"
rm -f target/reliability-report.md target/simulation-report.md
# Each reliability scenario adds its row to this table (tests/tests/reliability/).
export RELIABILITY_REPORT="$ROOT/target/reliability-report.md"
cargo test --workspace "$@" 2>&1 | tee "$out"

# The IAM check needs the whole suite's records: on a full run only (or IAM_CHECK=1 after a
# partial one that covers what you changed), so `./scripts/test.sh <filter>` runs just that.
if [ $# -eq 0 ] || [ "${IAM_CHECK:-}" = 1 ]; then
  log "IAM: the calls recorded per function vs template.yaml's policies (tests/tests/iam.rs)"
  cargo test --workspace --test iam -- --ignored 2>&1 | tee -a "$out"
else
  log "IAM check skipped: a partial run (arguments given; IAM_CHECK=1 runs it anyway)"
fi
if [ -f target/reliability-report.md ]; then
  printf '\nReliability suite (tests/tests/reliability/):\n'
  # The header, then the rows in scenario order (the tests finish in any order).
  head -n 2 target/reliability-report.md
  tail -n +3 target/reliability-report.md | sort -V
fi
if [ -f target/simulation-report.md ]; then
  printf '\nSimulation (tests/tests/simulation.rs):\n'
  cat target/simulation-report.md
fi
# One closing line for the whole run (cargo prints one per test binary, the last often a
# doc-test binary with nothing in it).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, i }' "$out"
