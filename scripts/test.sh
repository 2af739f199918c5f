#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real DynamoDB Local that this
# script installs (first run) and starts on a free port.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

ensure_dynamodb_local
port="$(free_port)"
mkdir -p "$LOCAL_DIR"
log "Starting DynamoDB Local on port $port"
start_dynamodb_local "$port" "$LOCAL_DIR/dynamodb-test.log"
trap 'kill "$DDB_PID" 2>/dev/null || true' EXIT
export DYNAMODB_ENDPOINT="http://127.0.0.1:$port"

log "cargo test --workspace"
cargo test --workspace "$@"
