#!/usr/bin/env bash
# gRPC vs REST through meshgate, same node, same run: starts a release meshgate-sim
# and meshgate on loopback, runs each k6 script for DURATION with VUS virtual users,
# and prints chat_ms (request to complete answer; ms resolution for gRPC, whose timing
# is taken in JS), throughput, and meshgate's own CPU time per request (from /proc),
# which does not depend on how costly the load generator's client is.
#   CARGO_TARGET_DIR=... bash loadtest/k6/run.sh      (after cargo build --release)
# Env: VUS, DURATION, TOKENS, SIM_ARGS (e.g. "--ttft-ms 5 --token-delay-ms 1"), OUT.
set -euo pipefail
cd "$(dirname "$0")"
BIN="${CARGO_TARGET_DIR:-../../target}/release"
VUS="${VUS:-8}"
DURATION="${DURATION:-10s}"
TOKENS="${TOKENS:-16}"
OUT="${OUT:-../results}"
for bin in meshgate meshgate-sim; do
  [ -x "$BIN/$bin" ] || { echo "no $BIN/$bin: cargo build --release -p meshgate -p meshgate-sim first (CARGO_TARGET_DIR?)" >&2; exit 1; }
done
mkdir -p "$OUT"
work="$(mktemp -d)"
cleanup() { kill "${gw_pid:-}" "${sim_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/meshgate-sim" --port 0 --models llama3.2 --tokens "$TOKENS" ${SIM_ARGS:-} >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
for _ in $(seq 100); do grep -q "http://" "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
SIM_URL="$(grep -o 'http://[0-9.:]*' "$work/sim.out" | head -1)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/meshgate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[[nodes]]
name = "sim"
url = "$SIM_URL"
TOML
"$BIN/meshgate" serve --config "$work/meshgate.toml" 2>"$work/gw.err" &
gw_pid=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1
done
echo "sim: $SIM_URL   meshgate: 127.0.0.1:$port   vus=$VUS duration=$DURATION tokens=$TOKENS"

# CPU time (user + system, clock ticks) a process has used so far.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name script target mode
  local before after
  before=$(cpu "$gw_pid")
  k6 run --quiet -e TARGET="$3" -e MODE="$4" -e VUS="$VUS" -e DURATION="$DURATION" \
    --summary-export "$OUT/$1.json" "$2" >"$OUT/$1.txt" 2>&1
  after=$(cpu "$gw_pid")
  python3 - "$1" "$OUT/$1.json" "$((after - before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
name, path, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = json.load(open(path))["metrics"]
c = m.get("chat_ms", {})
n = m.get("iterations", {})
checks = m.get("checks", {})
# meshgate's own CPU per request (meaningless for the direct-to-node rows).
cpu_us = ticks / hz * 1e6 / max(n.get("count", 1), 1)
print(f"{name:<20} {n.get('rate', 0):7.0f} req/s  p50 {c.get('p(50)', 0):6.2f}  p95 {c.get('p(95)', 0):6.2f}  "
      f"p99 {c.get('p(99)', 0):6.2f} ms  meshgate cpu {cpu_us:6.0f} us/req  "
      f"checks {checks.get('passes', 0)}/{checks.get('passes', 0) + checks.get('fails', 0)}")
PY
}
run grpc_health_k6_base grpc_health.js "127.0.0.1:$port" unary
run direct_rest_unary rest_chat.js "$SIM_URL" unary
run direct_rest_stream rest_chat.js "$SIM_URL" stream
run rest_unary rest_chat.js "http://127.0.0.1:$port" unary
run grpc_unary grpc_chat.js "127.0.0.1:$port" unary
run rest_stream rest_chat.js "http://127.0.0.1:$port" stream
run grpc_stream grpc_chat.js "127.0.0.1:$port" stream
