#!/usr/bin/env bash
# What lookups cost the live service, in one run against a local tansu:
#
#   scripts/bench-lookup.sh [EVENTS]        (default 1000000)
#
# 1. starts tansu (in-memory) and loads EVENTS generated events (`stagestream loadgen`);
# 2. `stagestream run` (api.enabled) drains them alone, then a second instance (another
#    group) drains them while LOOKUP_CLIENTS (default 4) clients send
#    `GET /customers/{id}` back to back for the stream's customers;
# 3. prints both drain rates and their ratio, how many lookups were answered, and their
#    client-side p50/p99 latency during the drain. The generated customers' ids are
#    random UUIDs, so the clients ask for ids of their own: each is a 404 answered by
#    the owner (the partition is held), the same round trip as a found customer.
#
# The owner answers a lookup between two messages; what one costs the owner alone is
# `cargo bench --bench lookup`. Figures: docs/performance.md, "Lookups".
set -euo pipefail
cd "$(dirname "$0")/.."

events="${1:-1000000}"
clients="${LOOKUP_CLIENTS:-4}"
source scripts/bench-common.sh
start_broker 4
customers=$(((events / 25) + 1000))

BENCH_CONFIG_EXTRA='[api]
enabled = true'
export BENCH_CONFIG_EXTRA

drain() { # GROUP -> prints the drain rate; LOOKUPS=1 runs the lookup clients meanwhile
    local group=$1 http config service rate
    http="127.0.0.1:$(free_port)"
    config="$work/$group.toml"
    write_config "$config" "$group" "$http" "$work/$group-snapshots"
    "$target/release/stagestream" run --config "$config" >"$work/$group.log" 2>&1 &
    service=$!
    pids+=("$service")
    if [[ "${LOOKUPS:-0}" == 1 ]]; then
        python3 - "$http" "$clients" "$customers" >"$work/lookups.txt" <<'EOF' &
import sys, threading, time, http.client
address, clients, customers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = address.split(":")
latencies, statuses, stop = [], {}, time.time() + 600
lock = threading.Lock()
def client(offset):
    i = offset
    while time.time() < stop:
        try:
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            while time.time() < stop:
                i = (i * 7919 + 13) % customers
                started = time.perf_counter()
                connection.request("GET", f"/customers/customer-{i}")
                response = connection.getresponse()
                response.read()
                took = time.perf_counter() - started
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status in (200, 404):
                        latencies.append(took)
        except (ConnectionError, OSError, http.client.HTTPException):
            time.sleep(0.05)
def report(*_):
    with lock:
        ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")
    print(f"answered={len(ordered)} statuses={statuses} p50_ms={pick(0.5):.2f} p99_ms={pick(0.99):.2f}", flush=True)
    sys.exit(0)
import signal
signal.signal(signal.SIGTERM, report)
for c in range(clients):
    threading.Thread(target=client, args=(c,), daemon=True).start()
while True:
    time.sleep(1)
EOF
        lookups=$!
    fi
    rate=$("$probe" run-rate --metrics "$http" --expect "$events")
    if [[ "${LOOKUPS:-0}" == 1 ]]; then
        kill -TERM "$lookups"
        wait "$lookups" || true
    fi
    kill -TERM "$service"
    wait "$service" || true
    echo "${rate#rate=}"
}

echo "== loading $events events"
write_config "$work/loader.toml" loader 127.0.0.1:1 "$work/loader-snapshots"
"$target/release/stagestream" loadgen --config "$work/loader.toml" \
    --customers "$customers" --days 60 --events "$events" \
    --start "$(date -u -d '120 days ago' +%Y-%m-%dT%H:%M:%SZ)" --seed 1

echo "== drain without lookups"
alone=$(drain alone)
echo "== drain with $clients lookup clients"
with=$(LOOKUPS=1 drain looked-up)
echo "drain alone: $alone events/s; with lookups: $with events/s; ratio $(python3 -c "print(f'{$with / $alone:.2f}')")"
echo "lookups during the drain: $(cat "$work/lookups.txt")"
