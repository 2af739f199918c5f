#!/usr/bin/env bash
# Runs the pipeline locally: DynamoDB Local, the table, demo balances, and every function under
# `cargo lambda watch` (hot reload) on http://localhost:9000. Ctrl-C stops everything it started.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

DDB_PORT="${DDB_PORT:-8000}"
WATCH_PORT="${WATCH_PORT:-9000}"
TABLE_NAME="${TABLE_NAME:-withdrawals}"
ENV_FILE="$LOCAL_DIR/lambda.env"

ensure_cargo_lambda
ensure_dynamodb_local
mkdir -p "$LOCAL_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "Stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for port in "$DDB_PORT" "$WATCH_PORT"; do
  if curl -s -o /dev/null "http://127.0.0.1:$port" 2>/dev/null; then
    echo "Port $port is in use (an earlier run still going?). Stop it or set DDB_PORT/WATCH_PORT." >&2
    exit 1
  fi
done

# A per-checkout secret for locally minted tokens, kept across runs so tokens stay valid.
if [ ! -f "$LOCAL_DIR/auth-secret" ]; then
  python3 -c 'import secrets; print(secrets.token_hex(32))' >"$LOCAL_DIR/auth-secret"
fi
cat >"$ENV_FILE" <<ENV
TABLE_NAME=$TABLE_NAME
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_REGION=$AWS_REGION
LOCAL_AUTH_SECRET=$(cat "$LOCAL_DIR/auth-secret")
RUST_LOG=info
ENV
set -a; source "$ENV_FILE"; set +a

log "Starting DynamoDB Local on port $DDB_PORT (in memory)"
start_dynamodb_local "$DDB_PORT" "$LOCAL_DIR/dynamodb-dev.log"
pids+=("$DDB_PID")

log "Building"
cargo build --quiet -p operator -p withdrawal-request -p payout-batcher -p provider-webhook
OP="$ROOT/target/debug/operator"
"$OP" create-table
for user in alice bob; do
  "$OP" credit --user "$user" --currency USD --amount 1000.00 >/dev/null
  "$OP" credit --user "$user" --currency EUR --amount 500.00 >/dev/null
  "$OP" credit --user "$user" --currency JPY --amount 150000 >/dev/null
done
log "Credited demo users alice and bob (USD 1000.00, EUR 500.00, JPY 150000)"

log "Starting cargo lambda watch on port $WATCH_PORT"
cargo lambda watch --invoke-port "$WATCH_PORT" --env-file "$ENV_FILE" >"$LOCAL_DIR/watch.log" 2>&1 &
pids+=("$!")

cat <<HELP

The pipeline is running. In another shell, from $ROOT:

  set -a; source .local/lambda.env; set +a
  TOKEN=\$(./target/debug/operator token --user alice)

  # request a withdrawal (the Idempotency-Key makes a retry safe)
  curl -s -X POST localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN" \\
       -H 'Idempotency-Key: demo-1' \\
       -d '{"currency":"USD","amount":"125.50","bank_account":"DE89370400440532013000"}'

  curl -s localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN"     # list
  curl -s localhost:$WATCH_PORT/balances -H "Authorization: Bearer \$TOKEN"        # balances
  curl -s -X DELETE localhost:$WATCH_PORT/withdrawals/<id> -H "Authorization: Bearer \$TOKEN"  # cancel

  ./target/debug/operator check      # conservation check over the whole table

Function logs: .local/watch.log. Ctrl-C here stops everything.
HELP

wait
