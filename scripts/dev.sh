#!/usr/bin/env bash
# Runs the whole pipeline locally: DynamoDB Local, the table, demo balances, the four functions
# under `cargo lambda watch` (hot reload) on :9000, the sandbox provider on :9100 calling the
# webhook back, and the stream relay handing the table's stream to event-publisher, which puts
# every state change on an EventBridge bus (moto's server, with Secrets Manager) that a demo
# subscriber's SQS queue receives. While it runs it watches the functions' health and the sandbox's callbacks; a
# function that dies is reported with its log tail and the functions are restarted. Ctrl-C stops
# everything it started, and nothing else.
#
#   ./scripts/dev.sh         run until Ctrl-C
#   ./scripts/dev.sh demo    run the full loop once by itself, print each step, then stop
#
# FUNCTIONS=arm64 runs the artifact SAM deploys instead of debug builds: the release arm64
# bootstraps (`cargo lambda build --release --arm64`, reused when ARM64_REUSE=1 and present) under
# qemu-aarch64-static, against cargo lambda watch's Runtime API alone (--only-lambda-apis); every
# AWS call they make is recorded in .local/stack-<WATCH_PORT>/calls (scripts/arm64-loop.sh).
#
# Ports: DDB_PORT, WATCH_PORT, SANDBOX_PORT (8000, 9000, 9100). A second stack on other ports runs
# beside the first: each keeps its files in .local/stack-<WATCH_PORT>/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MODE="${1:-run}"
FUNCTIONS="${FUNCTIONS:-watch}"
ARM64_FUNCTIONS=(withdrawal-request payout-batcher provider-webhook event-publisher)
DDB_PORT="${DDB_PORT:-8000}"
SECRETS_PORT="${SECRETS_PORT:-$((DDB_PORT + 10))}"
WATCH_PORT="${WATCH_PORT:-9000}"
SANDBOX_PORT="${SANDBOX_PORT:-9100}"
TABLE_NAME="${TABLE_NAME:-withdrawals}"
# Seconds between health checks; how long a check may take before the function counts as gone.
HEALTH_EVERY="${HEALTH_EVERY:-3}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-5}"
STACK_DIR="$LOCAL_DIR/stack-$WATCH_PORT"
ENV_FILE="$STACK_DIR/lambda.env"
WATCH_LOG="$STACK_DIR/watch.log"
HEALTH_LOG="$STACK_DIR/health.log"
# Demo accounts: the sandbox pays the first, fails the second, pays then returns the third.
PAID_ACCOUNT="DE89370400440532013000"
FAIL_ACCOUNT="GB82WEST12345698765432"
RETURN_ACCOUNT="FR1420041010050500013M02606"

ensure_cargo_lambda
ensure_dynamodb_local
ensure_moto
mkdir -p "$STACK_DIR"
: >"$HEALTH_LOG"

groups=()
WATCH_PGID=""
ARM64_PGIDS=()
stop_functions() {
  stop_group "${ARM64_PGIDS[@]}" "$WATCH_PGID"
  ARM64_PGIDS=() WATCH_PGID=""
}
# Stops everything this script started (and nothing else), then exits: a signal's handler that
# returned would let the health loop below carry on and start the functions again.
cleanup() {
  local status=$?
  trap - INT TERM EXIT
  log "Stopping"
  stop_group "${ARM64_PGIDS[@]}" "$WATCH_PGID" "${groups[@]}"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for port in "$DDB_PORT" "$WATCH_PORT" "$SANDBOX_PORT" "$SECRETS_PORT"; do
  if curl -s -o /dev/null "http://127.0.0.1:$port" 2>/dev/null; then
    echo "Port $port is in use (an earlier run still going?). Stop it or set DDB_PORT/WATCH_PORT/SANDBOX_PORT/SECRETS_PORT." >&2
    exit 1
  fi
done

# The functions read the provider's API key and the webhook secrets from Secrets Manager, as
# deployed: here moto's server, seeded with the local values. Only their ARNs reach the functions.
log "Starting Secrets Manager (moto) on port $SECRETS_PORT"
start_moto "$SECRETS_PORT" "$STACK_DIR/moto.log"
groups+=("$MOTO_PID")
SECRETS_ENDPOINT="http://127.0.0.1:$SECRETS_PORT"
API_KEY_ARN=$(put_secret "$SECRETS_ENDPOINT" provider-api-key "$PROVIDER_API_KEY")
WEBHOOK_SECRETS_ARN=$(put_secret "$SECRETS_ENDPOINT" provider-webhook-secrets "$PROVIDER_WEBHOOK_SECRET")
# Events out: the stack's bus in the same emulator, and a subscriber's queue the demo reads.
EVENT_BUS="withdrawal-events"
EVENTS_QUEUE_URL=$(setup_event_bus "$SECRETS_ENDPOINT" "$EVENT_BUS" demo-subscriber)

cat >"$ENV_FILE" <<ENV
TABLE_NAME=$TABLE_NAME
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_REGION=$AWS_REGION
LOCAL_AUTH_SECRET=$LOCAL_AUTH_SECRET
INTERNAL_CALLERS=$INTERNAL_CALLERS
AWS_ENDPOINT_URL_SECRETS_MANAGER=$SECRETS_ENDPOINT
PROVIDER_URL=http://127.0.0.1:$SANDBOX_PORT
PROVIDER_API_KEY_SECRET_ARN=$API_KEY_ARN
PROVIDER_WEBHOOK_SECRETS_ARN=$WEBHOOK_SECRETS_ARN
EVENT_BUS_NAME=$EVENT_BUS
AWS_ENDPOINT_URL_EVENTBRIDGE=$SECRETS_ENDPOINT
EVENTS_QUEUE_URL=$EVENTS_QUEUE_URL
REVIEW_THRESHOLDS=${REVIEW_THRESHOLDS:-USD:500,EUR:500,JPY:100000}
WITHDRAWAL_FEES=${WITHDRAWAL_FEES:-}
BENEFICIARY_COOLING_OFF_SECS=${BENEFICIARY_COOLING_OFF_SECS:-0}
RUST_LOG=info
ENV
if [ "$FUNCTIONS" = arm64 ]; then
  rm -rf "$STACK_DIR/calls"
  echo "CALL_LOG_DIR=$STACK_DIR/calls" >>"$ENV_FILE"
fi
set -a; source "$ENV_FILE"; set +a

log "Starting DynamoDB Local on port $DDB_PORT (in memory)"
start_dynamodb_local "$DDB_PORT" "$STACK_DIR/dynamodb.log"
groups+=("$DDB_PID")

log "Building"
cargo build --quiet -p operator -p sandbox-provider -p stream-relay \
  -p withdrawal-request -p payout-batcher -p provider-webhook -p event-publisher
if [ "$FUNCTIONS" = arm64 ]; then
  ensure_arm64_tools
  bootstraps_present() {
    local f
    for f in "${ARM64_FUNCTIONS[@]}"; do [ -f "target/lambda/$f/bootstrap" ] || return 1; done
  }
  if [ "${ARM64_REUSE:-0}" = 1 ] && bootstraps_present; then
    log "Reusing the arm64 bootstraps in target/lambda/"
  else
    log "cargo lambda build --release --arm64 (what SAM deploys)"
    cargo lambda build --release --arm64 $(printf -- '--bin %s ' "${ARM64_FUNCTIONS[@]}")
  fi
  for f in "${ARM64_FUNCTIONS[@]}"; do
    file "target/lambda/$f/bootstrap" | grep -q "ARM aarch64" ||
      { echo "target/lambda/$f/bootstrap is not an arm64 executable" >&2; exit 1; }
  done
fi
OP="$ROOT/target/debug/operator"
"$OP" create-table
# Each credit has its reference: running these lines again credits nothing twice.
for user in alice bob; do
  "$OP" credit --user "$user" --currency USD --amount 1000.00 --reference "demo-$user-USD" >/dev/null
  "$OP" credit --user "$user" --currency EUR --amount 500.00 --reference "demo-$user-EUR" >/dev/null
  "$OP" credit --user "$user" --currency JPY --amount 150000 --reference "demo-$user-JPY" >/dev/null
done
log "Credited demo users alice and bob (USD 1000.00, EUR 500.00, JPY 150000)"

log "Starting the sandbox provider on port $SANDBOX_PORT"
# Callbacks are retried for a day, at most a minute apart, like a real provider's.
groups+=("$(start_group "$STACK_DIR/sandbox.log" "$ROOT/target/debug/sandbox-provider" \
  --listen "127.0.0.1:$SANDBOX_PORT" \
  --webhook-url "http://127.0.0.1:$WATCH_PORT/webhooks/provider" \
  --callback-delay-ms 1000 --return-delay-ms 2000 \
  --fail-account "$FAIL_ACCOUNT" --return-account "$RETURN_ACCOUNT")")

# No `--timeout`: cargo lambda watch applies it to every route, the Runtime API's long-polled
# `next` included, and answers an idle function's `next` after that long with a bare 408 that
# lambda_runtime cannot parse ("missing lambda-runtime-aws-request-id header") — the function
# panics and is not restarted. The batcher then runs on its own default budget.
start_watch() {
  local code="" only=() f
  [ "$FUNCTIONS" != arm64 ] || only=(--only-lambda-apis)
  WATCH_PGID=$(start_group "$WATCH_LOG" cargo lambda watch "${only[@]}" --invoke-port "$WATCH_PORT" --env-file "$ENV_FILE")
  if [ "$FUNCTIONS" = arm64 ]; then
    # The Runtime API must answer before a function asks it for work.
    # (A TCP connect: any HTTP request would be queued as an invocation of no function.)
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$WATCH_PORT") 2>/dev/null && break
      sleep 0.2
    done
    for f in "${ARM64_FUNCTIONS[@]}"; do
      ARM64_PGIDS+=("$(AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$WATCH_PORT/.rt/$f" \
        AWS_LAMBDA_FUNCTION_NAME="$f" AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=256 \
        start_group "$STACK_DIR/$f.arm64.log" qemu-aarch64-static -L /usr/aarch64-linux-gnu \
        "$ROOT/target/lambda/$f/bootstrap")")
    done
  fi
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$WATCH_PORT/balances" || true)
    if [ "$code" = "401" ]; then return 0; fi
    sleep 0.5
  done
  echo "cargo lambda watch did not come up; see $WATCH_LOG" >&2
  return 1
}

log "Starting cargo lambda watch on port $WATCH_PORT"
start_watch

# The event-source mapping's stand-in: the table's stream (DynamoDB Local) to event-publisher.
log "Starting the stream relay (the table's stream -> event-publisher -> bus $EVENT_BUS)"
groups+=("$(start_group "$STACK_DIR/relay.log" "$ROOT/target/debug/stream-relay" \
  --table "$TABLE_NAME" --endpoint "http://127.0.0.1:$DDB_PORT" \
  --invoke-url "http://127.0.0.1:$WATCH_PORT/2015-03-31/functions/event-publisher/invocations")")

# --- health ---------------------------------------------------------------------------------
# Three signals, each cheap:
# - the functions' processes (children of cargo lambda watch): one that vanishes while watch is
#   not rebuilding died (a panic, a kill, an OOM) — caught within one check;
# - the watch log: a function that exited or panicked;
# - a request per HTTP function (401 and 405, both before touching the table): a function that
#   hangs. A failed probe counts only when the log shows no rebuild in progress (watch restarts
#   a function after a source change, which takes a while), and only HEALTH_FAILS times in a row.
# Three slow answers in a row on a busy machine are not a death; a process that is gone is.
HEALTH_FAILS="${HEALTH_FAILS:-3}"
watch_lines_seen=0
probe_failures=0
running_before=""
unhealthy() { # sets PROBLEMS (not run in a subshell: it keeps state between checks)
  local api hook total new exits building running name i gone=""
  PROBLEMS=""
  total=$(wc -l <"$WATCH_LOG")
  new=$(sed -n "$((watch_lines_seen + 1)),${total}p" "$WATCH_LOG")
  watch_lines_seen=$total
  exits=$(printf '%s\n' "$new" | grep -E "panicked at|command exited|command killed" | grep -v "ForceStop" || true)
  building=$(printf '%s\n' "$new" | grep -E "Compiling |Blocking waiting|Finished |FileEventKind" || true)
  [ -z "$exits" ] || PROBLEMS+="a function exited:"$'\n'"$exits"$'\n'
  if [ "$FUNCTIONS" = arm64 ]; then
    running=""
    for i in "${!ARM64_PGIDS[@]}"; do
      kill -0 -- "-${ARM64_PGIDS[$i]}" 2>/dev/null && running+="${ARM64_FUNCTIONS[$i]} "
    done
  else
    running=$(pgrep -P "$WATCH_PGID" -a 2>/dev/null | grep -oE "target/debug/[a-z-]+" | sort -u | tr '\n' ' ' || true)
  fi
  if [ -z "$building" ]; then
    for name in $running_before; do
      case " $running " in *" $name "*) ;; *) gone+="$name " ;; esac
    done
    [ -z "$gone" ] || PROBLEMS+="function process gone: $gone"$'\n'
  fi
  running_before=$running
  api=$(curl -s -o /dev/null --max-time "$HEALTH_TIMEOUT" -w '%{http_code}' "http://127.0.0.1:$WATCH_PORT/balances" || true)
  hook=$(curl -s -o /dev/null --max-time "$HEALTH_TIMEOUT" -w '%{http_code}' \
    "http://127.0.0.1:$WATCH_PORT/webhooks/provider" || true)
  if [ "$api" = "401" ] && [ "$hook" = "405" ]; then
    probe_failures=0
  elif [ -n "$building" ]; then
    probe_failures=0 # rebuilding after a source change: not a loss
  else
    probe_failures=$((probe_failures + 1))
    if [ "$probe_failures" -ge "$HEALTH_FAILS" ]; then
      [ "$api" = "401" ] || PROBLEMS+="withdrawal-request did not answer its health check (HTTP ${api:-none})"$'\n'
      [ "$hook" = "405" ] || PROBLEMS+="provider-webhook did not answer its health check (HTTP ${hook:-none})"$'\n'
    fi
  fi
}

# Callbacks the sandbox could not deliver (the webhook refused or was unreachable): each is
# reported once, when it first fails and again if it is given up.
reported_callbacks="$STACK_DIR/callbacks-reported"
: >"$reported_callbacks"
report_callbacks() {
  curl -s --max-time 5 "http://127.0.0.1:$SANDBOX_PORT/sandbox/events" 2>/dev/null | python3 -c '
import json, sys
seen = set(open(sys.argv[1]).read().split())
try:
    events = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
with open(sys.argv[1], "a") as out:
    for e in events:
        if e["state"] == "delivered":
            continue
        key = e["id"] + ":" + e["state"]
        if key in seen:
            continue
        out.write(key + "\n")
        print("callback %s (%s for %s) not delivered after %d attempt(s): %s -> %s" % (
            e["id"], e["event_type"], e["reference"], e["attempts"], e.get("last_error"),
            "given up" if e["state"] == "gave_up" else "retrying"))
' "$reported_callbacks" || true
}

restarts=0
# Checks once; on a failure reports it with the log tail, then restarts the functions (run) or
# fails (demo). Returns 1 only when it fails.
check_health() {
  local callbacks
  callbacks=$(report_callbacks)
  if [ -n "$callbacks" ]; then
    printf '%s\n' "$callbacks" | tee -a "$HEALTH_LOG" | sed 's/^/[dev.sh] WARNING: /' >&2
  fi
  unhealthy
  [ -n "$PROBLEMS" ] || return 0
  {
    printf '[dev.sh] %s FUNCTION LOST:\n%s' "$(date -u +%FT%TZ)" "$PROBLEMS"
    echo "[dev.sh] last lines of $WATCH_LOG:"
    tail -n 20 "$WATCH_LOG" | sed 's/^/    /'
  } | tee -a "$HEALTH_LOG" >&2
  if [ "$MODE" = "demo" ]; then
    echo "[dev.sh] DEMO FAILED: a function died" >&2
    return 1
  fi
  restarts=$((restarts + 1))
  echo "[dev.sh] restarting the functions (restart $restarts)" | tee -a "$HEALTH_LOG" >&2
  stop_functions
  cp "$WATCH_LOG" "$STACK_DIR/watch.before-restart-$restarts.log"
  watch_lines_seen=0 probe_failures=0 running_before=""
  start_watch
  echo "[dev.sh] functions back after restart $restarts" | tee -a "$HEALTH_LOG" >&2
}

if [ "$MODE" = "demo" ]; then
  WATCH_PORT="$WATCH_PORT" STACK_DIR="$STACK_DIR" PAID_ACCOUNT="$PAID_ACCOUNT" \
    FAIL_ACCOUNT="$FAIL_ACCOUNT" RETURN_ACCOUNT="$RETURN_ACCOUNT" "$ROOT/scripts/demo.sh" &
  demo=$!
  # The demo fails fast if a function dies under it, instead of waiting out its loop.
  while kill -0 "$demo" 2>/dev/null; do
    if ! check_health; then kill "$demo" 2>/dev/null || true; exit 1; fi
    sleep "$HEALTH_EVERY"
  done
  wait "$demo"
  exit $?
fi

cat <<HELP

The pipeline is running. In another shell, from $ROOT:

  set -a; source .local/stack-$WATCH_PORT/lambda.env; set +a
  TOKEN=\$(./target/debug/operator token --user alice)

  # 1. register a bank account (locally usable at once: BENEFICIARY_COOLING_OFF_SECS=0), then
  #    request a withdrawal to it (the Idempotency-Key makes a retry safe)
  B=\$(curl -s -X POST localhost:$WATCH_PORT/beneficiaries -H "Authorization: Bearer \$TOKEN" \\
       -H 'Idempotency-Key: account-1' \\
       -d '{"bank_account":"$PAID_ACCOUNT","holder_name":"Alice Example"}' |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -s -X POST localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN" \\
       -H 'Idempotency-Key: demo-1' \\
       -d "{\"currency\":\"USD\",\"amount\":\"125.50\",\"beneficiary_id\":\"\$B\"}"

  # 2. run the batcher now instead of waiting for the schedule
  cargo lambda invoke payout-batcher --invoke-port $WATCH_PORT --data-file tests/payloads/scheduled-event.json

  # 3. a second later the sandbox calls the webhook: watch it settle
  curl -s localhost:$WATCH_PORT/withdrawals -H "Authorization: Bearer \$TOKEN"
  curl -s localhost:$WATCH_PORT/balances -H "Authorization: Bearer \$TOKEN"

  # funds in, as the platform's deposit service would (IAM deployed; a local service token here)
  DEPOSITS=\$(./target/debug/operator token --service "$LOCAL_DEPOSIT_CALLER")
  curl -s -X POST localhost:$WATCH_PORT/internal/credits -H "Authorization: Bearer \$DEPOSITS" \\
       -d '{"user_id":"alice","currency":"USD","amount":"50.00","reference":"deposit-1"}'

  # every state change as the subscriber's queue received it from the bus
  (source scripts/lib.sh; read_events "\$AWS_ENDPOINT_URL_EVENTBRIDGE" "\$EVENTS_QUEUE_URL")

  ./target/debug/operator batches    # batches and their status
  ./target/debug/operator check      # conservation check over the whole table

Bank account $FAIL_ACCOUNT fails at the sandbox, $RETURN_ACCOUNT is paid then returned.
Logs: .local/stack-$WATCH_PORT/{watch,sandbox,relay,health}.log. This shell reports a function that
dies (and restarts them) and every callback the sandbox could not deliver. Ctrl-C stops everything.
Run './scripts/dev.sh demo' to see the whole loop run by itself.
HELP

while true; do
  check_health
  sleep "$HEALTH_EVERY"
done
