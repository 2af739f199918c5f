#!/usr/bin/env bash
# Runs the whole pipeline locally: DynamoDB Local, the table, demo balances, the three functions
# under `cargo lambda watch` (hot reload) on :9000, and the sandbox provider on :9100 calling the
# webhook back. Ctrl-C stops everything it started.
#
#   ./scripts/dev.sh         run until Ctrl-C
#   ./scripts/dev.sh demo    run the full loop once by itself, print each step, then stop
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MODE="${1:-run}"
DDB_PORT="${DDB_PORT:-8000}"
WATCH_PORT="${WATCH_PORT:-9000}"
SANDBOX_PORT="${SANDBOX_PORT:-9100}"
TABLE_NAME="${TABLE_NAME:-withdrawals}"
ENV_FILE="$LOCAL_DIR/lambda.env"
# Demo accounts: the sandbox pays the first, fails the second, pays then returns the third.
PAID_ACCOUNT="DE89370400440532013000"
FAIL_ACCOUNT="GB82WEST12345698765432"
RETURN_ACCOUNT="FR1420041010050500013M02606"

ensure_cargo_lambda
ensure_dynamodb_local
mkdir -p "$LOCAL_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  log "Stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # cargo lambda watch runs the functions as its children.
  pkill -f "target/debug/(withdrawal-request|payout-batcher|provider-webhook)" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for port in "$DDB_PORT" "$WATCH_PORT" "$SANDBOX_PORT"; do
  if curl -s -o /dev/null "http://127.0.0.1:$port" 2>/dev/null; then
    echo "Port $port is in use (an earlier run still going?). Stop it or set DDB_PORT/WATCH_PORT/SANDBOX_PORT." >&2
    exit 1
  fi
done

cat >"$ENV_FILE" <<ENV
TABLE_NAME=$TABLE_NAME
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_REGION=$AWS_REGION
LOCAL_AUTH_SECRET=$LOCAL_AUTH_SECRET
PROVIDER_URL=http://127.0.0.1:$SANDBOX_PORT
PROVIDER_API_KEY=$PROVIDER_API_KEY
PROVIDER_WEBHOOK_SECRET=$PROVIDER_WEBHOOK_SECRET
RUST_LOG=info
ENV
set -a; source "$ENV_FILE"; set +a

log "Starting DynamoDB Local on port $DDB_PORT (in memory)"
start_dynamodb_local "$DDB_PORT" "$LOCAL_DIR/dynamodb-dev.log"
pids+=("$DDB_PID")

log "Building"
cargo build --quiet -p operator -p sandbox-provider -p withdrawal-request -p payout-batcher -p provider-webhook
OP="$ROOT/target/debug/operator"
"$OP" create-table
for user in alice bob; do
  "$OP" credit --user "$user" --currency USD --amount 1000.00 >/dev/null
  "$OP" credit --user "$user" --currency EUR --amount 500.00 >/dev/null
  "$OP" credit --user "$user" --currency JPY --amount 150000 >/dev/null
done
log "Credited demo users alice and bob (USD 1000.00, EUR 500.00, JPY 150000)"

log "Starting the sandbox provider on port $SANDBOX_PORT"
"$ROOT/target/debug/sandbox-provider" --listen "127.0.0.1:$SANDBOX_PORT" \
  --webhook-url "http://127.0.0.1:$WATCH_PORT/webhooks/provider" \
  --callback-delay-ms 1000 --return-delay-ms 2000 \
  --fail-account "$FAIL_ACCOUNT" --return-account "$RETURN_ACCOUNT" \
  >"$LOCAL_DIR/sandbox.log" 2>&1 &
pids+=("$!")

log "Starting cargo lambda watch on port $WATCH_PORT"
cargo lambda watch --invoke-port "$WATCH_PORT" --timeout 120 --env-file "$ENV_FILE" >"$LOCAL_DIR/watch.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WATCH_PORT/balances" || true)
  if [ "$code" = "401" ]; then break; fi
  sleep 0.5
done
[ "$code" = "401" ] || { echo "cargo lambda watch did not come up; see .local/watch.log" >&2; exit 1; }

if [ "$MODE" = "demo" ]; then
  WATCH_PORT="$WATCH_PORT" PAID_ACCOUNT="$PAID_ACCOUNT" FAIL_ACCOUNT="$FAIL_ACCOUNT" \
    RETURN_ACCOUNT="$RETURN_ACCOUNT" "$ROOT/scripts/demo.sh"
  exit $?
fi

cat <<HELP

The pipeline is running. In another shell, from $ROOT:

  set -a; source .local/lambda.env; set +a
  TOKEN=\$(./target/debug/operator token --user alice)

  # 1. request a withdrawal (the Idempotency-Key makes a retry safe)
  curl -s -X POST localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN" \\
       -H 'Idempotency-Key: demo-1' \\
       -d '{"currency":"USD","amount":"125.50","bank_account":"$PAID_ACCOUNT"}'

  # 2. run the batcher now instead of waiting for the schedule
  cargo lambda invoke payout-batcher --data-file tests/events/scheduled-event.json

  # 3. a second later the sandbox calls the webhook: watch it settle
  curl -s localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN"
  curl -s localhost:$WATCH_PORT/balances -H "Authorization: Bearer \$TOKEN"

  ./target/debug/operator batches    # batches and their status
  ./target/debug/operator check      # conservation check over the whole table

Bank account $FAIL_ACCOUNT fails at the sandbox, $RETURN_ACCOUNT is paid then returned.
Logs: .local/watch.log (functions), .local/sandbox.log. Ctrl-C here stops everything.
Run './scripts/dev.sh demo' to see the whole loop run by itself.
HELP

wait
