#!/usr/bin/env bash
# The whole-system simulation (tests/tests/simulation.rs) on its own, against a fresh DynamoDB
# Local and Secrets Manager emulator (started by test.sh).
#
#   ./scripts/simulate.sh --seed 42 --steps 300     # replay one seed, printing its step log
#   ./scripts/simulate.sh --seeds 2000 --steps 500  # a long run (seeds 1..2000 after the corpus)
#
# The same as SIM_SEED / SIM_SEEDS / SIM_STEPS / SIM_FIRST_SEED / SIM_CONCURRENCY with
# `./scripts/test.sh --test simulation`. (test.sh's closing IAM step needs every test binary's
# calls, so it fails after a partial run: expected; only the full run is checked for IAM.)
set -euo pipefail
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) export SIM_SEED="$2"; shift 2 ;;
    --seeds) export SIM_SEEDS="$2"; shift 2 ;;
    --steps) export SIM_STEPS="$2"; shift 2 ;;
    --first-seed) export SIM_FIRST_SEED="$2"; shift 2 ;;
    --concurrency) export SIM_CONCURRENCY="$2"; shift 2 ;;
    *) echo "usage: $0 [--seed N | --seeds N [--first-seed N]] [--steps M] [--concurrency K]" >&2; exit 2 ;;
  esac
done
exec "$(dirname "$0")/test.sh" --test simulation -- --nocapture
