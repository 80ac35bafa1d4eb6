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
#    themselves (produced -> read by that consumer, without stagestream in the path),
#    both also as p99 per 5 s of production (tansu's fetch slows as its topics grow);
#    and the CPU seconds each process in the path used meanwhile (the service, tansu,
#    loadgen, the probe), against the machine's cores times the phase's wall time.
#
# SHADOW=1 runs a shadow model beside the live one (the preset with retention at a
# third order, to its own topic `journey-shadow`): compare its figures, the drain's CPU
# per event and the resident memory after it, with a run without.
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
if [[ -n "${SHADOW:-}" ]]; then
    sed 's/at_least = 2/at_least = 3/; s/version = "1"/version = "candidate"/' \
        config/presets/five-stage.toml >"$work/candidate.toml"
    "$tansu" topic create journey-shadow --broker "tcp://$bootstrap" --partitions "$partitions" >/dev/null
    BENCH_CONFIG_EXTRA="${BENCH_CONFIG_EXTRA:-}
[shadow]
config = \"$work/candidate.toml\"
topic = \"journey-shadow\""
fi
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
drain_cpu=$(awk -v ticks="$(cpu_ticks "$service")" -v hz="$ticks" -v events="$events" \
    'BEGIN { printf "drain_cpu_s=%.2f drain_cpu_us_per_event=%.2f", ticks / hz, 1e6 * ticks / hz / events }')
rss=$(awk '/VmRSS/ { printf "rss_after_drain_mib=%.1f", $2 / 1024 }' "/proc/$service/status")

offered="${LATENCY_RATE:-$((run / 2))}"
echo "== latency at $offered events/s (half of (b) unless LATENCY_RATE) for ${latency_seconds}s"
coproc LATENCY { exec "$probe" --bootstrap "$bootstrap" --fetch-wait-ms "$fetch_wait_ms" \
    latency --input events --output journey-stages --partitions "$partitions" \
    --duration "$((latency_seconds + 2))s"; }
pids+=("$LATENCY_PID")
read -r ready <&"${LATENCY[0]}"
[[ "$ready" == ready ]] || { echo "latency probe did not start: $ready" >&2; exit 1; }
cpu_before="$(cpu_ticks "$service") $(cpu_ticks "$tansu_pid") $(cpu_ticks "$LATENCY_PID")"
# bash's `time` gives loadgen's own CPU (its output and logs stay on stderr, fd 3).
TIMEFORMAT='%R %U %S'
{ time "$stagestream" loadgen --config "$config" --customers "$((offered * latency_seconds / 25 + 1000))" \
    --days 60 --rate "$offered" --duration "${latency_seconds}s" --seed 2 2>&3; } 3>&2 2>"$work/loadgen.time"
cpu_after="$(cpu_ticks "$service") $(cpu_ticks "$tansu_pid") $(cpu_ticks "$LATENCY_PID")"
read -r wall loadgen_user loadgen_system <"$work/loadgen.time"
cpu=$(awk -v before="$cpu_before" -v after="$cpu_after" -v hz="$ticks" -v wall="$wall" \
    -v loadgen_user="$loadgen_user" -v loadgen_system="$loadgen_system" -v cores="$(nproc)" 'BEGIN {
        split(before, b); split(after, a)
        service = (a[1] - b[1]) / hz; broker = (a[2] - b[2]) / hz; probe = (a[3] - b[3]) / hz
        loadgen = loadgen_user + loadgen_system
        printf "cpu_s_service=%.2f cpu_s_broker=%.2f cpu_s_loadgen=%.2f cpu_s_probe=%.2f busy=%.0f%%_of_%d_cores_over_%.1fs",
            service, broker, loadgen, probe, 100 * (service + broker + loadgen + probe) / (cores * wall), cores, wall
    }')
read -r latency <&"${LATENCY[0]}"

kill -TERM "$service"
wait "$service" || { echo "stagestream run did not stop cleanly; log:" >&2; tail "$work/stagestream.log" >&2; exit 1; }

echo
echo "events=$events partitions=$partitions"
echo "bare_consumer_rate=$bare"
echo "stagestream_run_rate=$run shadow=${SHADOW:-none}"
echo "$drain_cpu $rss"
awk -v run="$run" -v bare="$bare" 'BEGIN { printf "ratio=%.2f\n", run / bare }'
echo "offered_rate=$offered $latency"
echo "$cpu"
