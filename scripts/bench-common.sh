# Sourced by scripts/bench-e2e.sh and scripts/bench-ab.sh (from the repository root):
# the parts both benchmarks set up the same way.
#
# On sourcing: builds the service and the probe, sets $target, $probe and $tansu, makes
# the scratch folder $work and the list $pids, both cleaned up on exit. Then:
#   free_port                     prints a free local TCP port
#   start_broker PARTITIONS       starts tansu (in-memory) on a free port, sets
#                                 $bootstrap and $tansu_pid, creates `events` and
#                                 `journey-stages` (PARTITIONS each) and `dead-letters`
#   write_config FILE GROUP HTTP SNAPSHOTS [CONSUMER_LINES]
#                                 the five-stage preset wired to those topics, group
#                                 GROUP, /metrics on HTTP, snapshots under SNAPSHOTS,
#                                 extra lines for [kafka.consumer]; BENCH_CONFIG_EXTRA,
#                                 if set, is TOML appended after it (a [kafka.producer]
#                                 table, say; `loadgen` reads the same file)
#   cpu_ticks PID                 the process's user + system CPU so far, in $ticks a second
# Consumers use fetch.wait.max.ms=$fetch_wait_ms (5): tansu holds every fetch for the
# full wait even when data is ready. TANSU_STORAGE (default memory://tansu/) is the
# broker's storage engine, TANSU_DIR the folder it runs in (a relative sqlite://FILE.db
# is taken from there); E2E_PROBE=PATH runs another build of the probe.

fetch_wait_ms=5

cargo build --release --quiet --bin stagestream --example e2e_probe
target="${CARGO_TARGET_DIR:-target}"
probe="${E2E_PROBE:-$target/release/examples/e2e_probe}"
tansu="$(scripts/tansu.sh install)"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_broker() {
    local partitions=$1
    local port script="$PWD/scripts/tansu.sh"
    port=$(free_port)
    bootstrap="127.0.0.1:$port"
    # tansu.sh execs the broker, so $! is the broker's pid (cpu_ticks reads it).
    (cd "${TANSU_DIR:-.}" && exec "$script" start "$port" "${TANSU_STORAGE:-memory://tansu/}") \
        >"$work/tansu.log" 2>&1 &
    tansu_pid=$!
    pids+=("$tansu_pid")
    for _ in $(seq 100); do
        if "$tansu" topic create events --broker "tcp://$bootstrap" --partitions "$partitions" \
            >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    "$tansu" topic create journey-stages --broker "tcp://$bootstrap" --partitions "$partitions" >/dev/null
    "$tansu" topic create dead-letters --broker "tcp://$bootstrap" --partitions 1 >/dev/null
}

write_config() {
    cat config/presets/five-stage.toml - >"$1" <<EOF

[kafka]
brokers = "$bootstrap"
group_id = "$2"

[input]
topics = ["events"]

[output]
topic = "journey-stages"

[dlq]
topic = "dead-letters"

[kafka.consumer]
"fetch.wait.max.ms" = "$fetch_wait_ms"
${5:-}

[snapshot]
dir = "$4"

[http]
bind = "$3"
${BENCH_CONFIG_EXTRA:-}
EOF
}
