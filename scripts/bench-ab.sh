#!/usr/bin/env bash
# Alternates variants of `stagestream run` on one loaded topic, so that a change can be
# judged on a noisy machine:
#
#   scripts/bench-ab.sh EVENTS ROUNDS VARIANT...
#
# A VARIANT is "LABEL|ENV|BINARY|CONSUMER_PROPERTIES": environment assignments for the
# run (space-separated, may be empty), the stagestream binary, and extra lines for the
# `[kafka.consumer]` table separated by ';' (may be empty). For example:
#
#   scripts/bench-ab.sh 500000 4 "thp||target/release/stagestream|" \
#       "nothp|MALLOC_CONF=thp:default|target/release/stagestream|" \
#       'q8||target/release/stagestream|"queued.max.messages.kbytes" = "8192"'
#
# Starts tansu (in-memory) on a free port, loads EVENTS generated events into a
# 4-partition topic once, then for each round runs every variant with a fresh consumer
# group until it has consumed every event and every output is delivered. One line per
# run: rate (first record to last delivery), the service's CPU per event (all threads,
# and its owner thread alone), peak RSS and minor faults, the machine's
# transparent-huge-page faults, and tansu's CPU seconds during the run. Both consumers
# use fetch.wait.max.ms=5, as in bench-e2e.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# < 3)); then
    sed -n '2,20p' "$0" >&2
    exit 64
fi
events=$1
rounds=$2
shift 2

source scripts/bench-common.sh
start_broker 4

write_config "$work/load.toml" load "127.0.0.1:$(free_port)" "$work/snapshots-load"
"$target/release/stagestream" loadgen --config "$work/load.toml" --customers $((events / 25 + 1000)) \
    --days 60 --events "$events" --start "$(date -u -d '120 days ago' +%Y-%m-%dT%H:%M:%SZ)" --seed 1 \
    >/dev/null 2>&1

thp_faults() { awk '/^thp_fault_alloc/ {print $2}' /proc/vmstat; }
# Nanoseconds on a CPU of the service's owner thread (the one that polls, decodes, runs
# the engines and produces), from the scheduler's statistics.
owner_cpu_ns() {
    local task
    for task in /proc/"$1"/task/*; do
        if [[ "$(cat "$task/comm")" == stagestream-ser* ]]; then
            awk '{print $1}' "$task/schedstat"
            return
        fi
    done
    echo 0
}
for round in $(seq "$rounds"); do
    for variant in "$@"; do
        IFS='|' read -r label environment binary consumer_lines <<<"$variant"
        group="ab-$label-$round"
        http="127.0.0.1:$(free_port)"
        write_config "$work/$group.toml" "$group" "$http" "$work/snapshots-$group" "${consumer_lines//;/$'\n'}"
        tansu_before=$(cpu_ticks "$tansu_pid")
        thp_before=$(thp_faults)
        # shellcheck disable=SC2086 # the assignments are meant to split
        env $environment "$binary" run --config "$work/$group.toml" >"$work/$group.log" 2>&1 &
        service=$!
        rate=$("$probe" run-rate --metrics "$http" --expect "$events" 2>/dev/null)
        read -r faults service_ticks <<<"$(awk '{print $10, $14 + $15}' "/proc/$service/stat")"
        owner_ns=$(owner_cpu_ns "$service")
        peak_rss=$(awk '/VmHWM/ {print $2}' "/proc/$service/status")
        tansu_after=$(cpu_ticks "$tansu_pid")
        thp_after=$(thp_faults)
        kill -TERM "$service"
        wait "$service" || { echo "$label did not stop cleanly; log:" >&2; tail "$work/$group.log" >&2; exit 1; }
        awk -v round="$round" -v label="$label" -v rate="${rate#rate=}" -v t="$service_ticks" \
            -v hz="$ticks" -v n="$events" -v rss="$peak_rss" -v faults="$faults" \
            -v thp=$((thp_after - thp_before)) -v tansu=$((tansu_after - tansu_before)) -v owner="$owner_ns" 'BEGIN {
                printf "round=%s variant=%s rate=%s cpu_us_per_event=%.2f owner_cpu_us_per_event=%.2f peak_rss_kb=%s minflt=%s thp_faults=%s tansu_cpu_s=%.2f\n",
                    round, label, rate, t / hz / n * 1e6, owner / n / 1e3, rss, faults, thp, tansu / hz
            }'
    done
done
