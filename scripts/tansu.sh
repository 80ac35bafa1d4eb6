#!/usr/bin/env bash
# The real Kafka-protocol broker the end-to-end tests and benchmarks run against:
# tansu (Apache-2.0, crates.io), pinned, installed once into a cache folder.
#
#   scripts/tansu.sh install              install if missing; print the binary's path
#   scripts/tansu.sh start PORT [STORAGE] run a broker on 127.0.0.1:PORT in the
#                                         foreground (STORAGE default memory://tansu/;
#                                         sqlite://FILE.db keeps data across restarts)
#
# The cache folder is $STAGESTREAM_CACHE (default ~/.cache/stagestream). Installing
# takes about 10 minutes on a 2-core machine; later calls return at once.
# TANSU_BINARY=PATH runs another build instead (benchmarks only, e.g. the one
# scripts/tansu-fetch-patched.sh prints); nothing is installed then.
set -euo pipefail

version=0.6.0
cache="${STAGESTREAM_CACHE:-$HOME/.cache/stagestream}"
root="$cache/tansu-$version"
binary="${TANSU_BINARY:-$root/bin/tansu}"

install() {
    if [[ -z "${TANSU_BINARY:-}" && ! -x "$binary" ]]; then
        echo "installing tansu $version into $root (about 10 minutes)" >&2
        mkdir -p "$root"
        cargo install tansu --version "$version" --features dynostore,libsql --locked \
            --root "$root" >&2
    fi
    echo "$binary"
}

case "${1:-}" in
    install)
        install
        ;;
    start)
        port="${2:?usage: scripts/tansu.sh start PORT [STORAGE]}"
        storage="${3:-memory://tansu/}"
        install >/dev/null
        exec "$binary" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage"
        ;;
    *)
        echo "usage: scripts/tansu.sh install | start PORT [STORAGE]" >&2
        exit 64
        ;;
esac
