#!/usr/bin/env bash
# End to end through a local Kafka-protocol broker (tansu), in one run:
#
#   scripts/bench-e2e.sh [EVENTS]        (default 1000000)
#
# 1. starts tansu (in-memory storage) on a free port and creates the topics
#    (PARTITIONS partitions, default 4);
# 2. loads EVENTS generated events (`stagestream loadgen`, the demo's stream);
# 3. measures (a) a bare rdkafka consumer draining the topic (the ceiling) and
#    (b) `stagestream run` (five-stage preset, snapshots on) draining it to its output
#    topic, both from first record to last, and prints both rates and their ratio;
# 4. offers half of (b)'s rate (or LATENCY_RATE events/s) for LATENCY_SECONDS (default
#    20) while the service runs and prints p50/p99 event-to-output latency of the stage
#    transitions: from the Kafka timestamp `loadgen` gives each event to the moment a
#    consumer reads the transition; and, as the floor, the same for the input events
#    themselves (produced -> read by that consumer, without stagestream in the path).
#
# Both consumers use fetch.wait.max.ms=5: tansu holds every fetch for the full wait
# even when data is ready. STAGESTREAM=PATH runs another build of the service (to
# alternate two builds on one machine). Results go to stdout; docs/performance.md has
# figures.
set -euo pipefail
cd "$(dirname "$0")/.."

events="${1:-1000000}"
partitions="${PARTITIONS:-4}"
latency_seconds="${LATENCY_SECONDS:-20}"
source scripts/bench-common.sh
stagestream="${STAGESTREAM:-$target/release/stagestream}"
start_broker "$partitions"
http="127.0.0.1:$(free_port)"
config="$work/stagestream.toml"
write_config "$config" bench-e2e "$http" "$work/snapshots"

echo "== loading $events events into events ($partitions partitions)"
# Enough shoppers that the stream does not end first (~31 events per shopper in 60 days).
customers=$(((events / 25) + 1000))
# History from 120 to 60 days ago, so the latency load below (the last 60 days) is on time.
"$stagestream" loadgen --config "$config" --customers "$customers" --days 60 --events "$events" \
    --start "$(date -u -d '120 days ago' +%Y-%m-%dT%H:%M:%SZ)" --seed 1

echo "== (a) bare rdkafka consumer"
bare=$("$probe" --bootstrap "$bootstrap" --fetch-wait-ms "$fetch_wait_ms" \
    drain --topic events --partitions "$partitions" --expect "$events")
bare=${bare#rate=}

echo "== (b) stagestream run"
"$stagestream" run --config "$config" >"$work/stagestream.log" 2>&1 &
service=$!
pids+=("$service")
run=$("$probe" run-rate --metrics "$http" --expect "$events")
run=${run#rate=}

offered="${LATENCY_RATE:-$((run / 2))}"
echo "== latency at $offered events/s (half of (b) unless LATENCY_RATE) for ${latency_seconds}s"
coproc LATENCY { "$probe" --bootstrap "$bootstrap" --fetch-wait-ms "$fetch_wait_ms" \
    latency --input events --output journey-stages --partitions "$partitions" \
    --duration "$((latency_seconds + 2))s"; }
pids+=("$LATENCY_PID")
read -r ready <&"${LATENCY[0]}"
[[ "$ready" == ready ]] || { echo "latency probe did not start: $ready" >&2; exit 1; }
"$stagestream" loadgen --config "$config" --customers "$((offered * latency_seconds / 25 + 1000))" \
    --days 60 --rate "$offered" --duration "${latency_seconds}s" --seed 2
read -r latency <&"${LATENCY[0]}"

kill -TERM "$service"
wait "$service" || { echo "stagestream run did not stop cleanly; log:" >&2; tail "$work/stagestream.log" >&2; exit 1; }

echo
echo "events=$events partitions=$partitions"
echo "bare_consumer_rate=$bare"
echo "stagestream_run_rate=$run"
awk -v run="$run" -v bare="$bare" 'BEGIN { printf "ratio=%.2f\n", run / bare }'
echo "offered_rate=$offered $latency"
