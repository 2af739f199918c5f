#!/usr/bin/env bash
# Soak: the local stack (./scripts/dev.sh, on free ports of its own) under a steady mix of
# ordinary use — requests, cancels, lists, batcher runs, operator commands, the sandbox's
# callbacks — with idle gaps longer than any local timeout and, optionally, source changes that
# make `cargo lambda watch` rebuild. At the end it reports what it sent, every function lost (and
# whether dev.sh brought it back), panics in the functions' logs, callbacks never delivered, and
# runs `operator check`. Exits non-zero on any panic, failed request or failed check.
#
#   ./scripts/soak.sh                         30 minutes (SOAK_MINUTES), idle gaps up to 200 s
#   SOAK_MINUTES=4 ./scripts/soak.sh          the short version CI runs
#   SOAK_TOUCH=1 ./scripts/soak.sh            also touch a function's source every 5th cycle
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

MINUTES="${SOAK_MINUTES:-30}"
TOUCH="${SOAK_TOUCH:-0}"
# Idle gaps in seconds, used in turn: 150 and 200 are past the 120 s after which the old
# `--timeout 120` answered an idle function's long-poll with the 408 that killed it.
GAPS=(5 150 20 60 200 10 90)
log "Soak for $MINUTES min"
SOAK_LOG="$LOCAL_DIR/soak-$$.log"
start_stack "$SOAK_LOG"
# dev.sh stops what it started within its own 5 s grace; give it more than that.
trap 'stop_group --grace 15 "$DEV_PGID"' EXIT
API="http://127.0.0.1:$WATCH_PORT"
OP="$ROOT/target/debug/operator"
ALICE=$("$OP" token --user alice)
BOB=$("$OP" token --user bob)

sent=0 failed=0 cycles=0
# call EXPECTED-CODES CURL-ARGS...: one request; anything else (5xx, no answer) is a failure.
call() {
  local expect="$1" code; shift
  code=$(curl -s -o /dev/null --max-time 30 -w '%{http_code}' "$@" || true)
  sent=$((sent + 1))
  if [[ " $expect " != *" $code "* ]]; then
    failed=$((failed + 1))
    echo "$(date -u +%T) unexpected HTTP ${code:-none} (wanted $expect) for: $*" >&2
  fi
}
request() { # token key amount beneficiary
  curl -s --max-time 30 -X POST "$API/withdrawals" -H "Authorization: Bearer $1" \
    -H "Idempotency-Key: $2" -d "{\"currency\":\"USD\",\"amount\":\"$3\",\"beneficiary_id\":\"$4\"}"
}
# Withdrawals go only to registered beneficiaries (usable at once: dev.sh's cooling-off is 0).
beneficiary() { # token key -> its id
  curl -s --max-time 30 -X POST "$API/beneficiaries" -H "Authorization: Bearer $1" -H "Idempotency-Key: $2" \
    -d '{"bank_account":"DE89370400440532013000","holder_name":"Soak Test"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
ALICE_B=$(beneficiary "$ALICE" soak-alice)
BOB_B=$(beneficiary "$BOB" soak-bob)

end=$(( $(date +%s) + MINUTES * 60 ))
while [ "$(date +%s)" -lt "$end" ]; do
  cycles=$((cycles + 1))
  # 201, or 409 when alice has too many open (the batcher has not run yet): both fine.
  call "201 409" -X POST "$API/withdrawals" -H "Authorization: Bearer $ALICE" -H "Idempotency-Key: soak-$cycles-a" \
    -d "{\"currency\":\"USD\",\"amount\":\"1.25\",\"beneficiary_id\":\"$ALICE_B\"}"
  id=$(request "$BOB" "soak-$cycles-b" 2.00 "$BOB_B" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("id",""))' 2>/dev/null || true)
  sent=$((sent + 1)); [ -n "$id" ] || { failed=$((failed + 1)); echo "bob's request failed" >&2; }
  [ -z "$id" ] || call "200" -X DELETE "$API/withdrawals/$id" -H "Authorization: Bearer $BOB"
  call "200" "$API/withdrawals?limit=5" -H "Authorization: Bearer $ALICE"
  call "200" "$API/balances" -H "Authorization: Bearer $BOB"
  out=$(cargo lambda invoke payout-batcher --invoke-port "$WATCH_PORT" \
    --data-file tests/payloads/scheduled-event.json 2>&1) || { failed=$((failed + 1)); echo "batcher: $out" >&2; }
  sent=$((sent + 1))
  "$OP" batches >/dev/null || { failed=$((failed + 1)); echo "operator batches failed" >&2; }
  if [ "$TOUCH" = 1 ] && [ $((cycles % 5)) = 0 ]; then
    touch functions/provider-webhook/src/lib.rs
  fi
  gap=${GAPS[$(( (cycles - 1) % ${#GAPS[@]} ))]}
  left=$(( end - $(date +%s) ))
  [ "$gap" -le "$left" ] || gap=$(( left > 0 ? left : 0 ))
  echo "$(date -u +%T) cycle $cycles: $sent sent, $failed failed; idle ${gap}s" >&2
  sleep "$gap"
done

log "Soak done; letting the last callbacks arrive"
sleep 5
# Function panics; not cargo lambda watch's own when dev.sh stops it for a restart ("A Tokio 1.x
# context was found, but it is being shutdown").
all_panics=$(cat "$STACK_DIR"/watch*.log | grep -c "panicked at" || true)
shutdown_panics=$(cat "$STACK_DIR"/watch*.log | grep -c "context was found, but it is being shutdown" || true)
panics=$((all_panics - shutdown_panics))
lost=$(grep -c "FUNCTION LOST" "$STACK_DIR/health.log" || true)
back=$(grep -c "functions back after restart" "$STACK_DIR/health.log" || true)
undelivered=$(curl -s "http://127.0.0.1:$SANDBOX_PORT/sandbox/events" |
  python3 -c 'import json,sys; print(sum(e["state"] != "delivered" for e in json.load(sys.stdin)))')
check=ok
"$OP" check >/dev/null || check=FAILED
echo "soak: ${MINUTES} min, $cycles cycles, $sent calls, $failed failed; functions lost $lost, restarted $back; panics $panics; callbacks undelivered $undelivered; operator check $check"
[ "$failed" = 0 ] && [ "$panics" = 0 ] && [ "$lost" = "$back" ] && [ "$undelivered" = 0 ] && [ "$check" = ok ]
