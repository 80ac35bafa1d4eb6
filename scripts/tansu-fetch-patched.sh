#!/usr/bin/env bash
# Builds tansu 0.6.0 with its in-memory fetch made O(batches returned) instead of
# O(batches stored), for benchmarks only (CI and the tests use the released tansu).
#
#   scripts/tansu-fetch-patched.sh     build if missing; print the binary's path
#
# Released tansu lists every batch object of a partition on each fetch (tansu-storage
# DynoStore::fetch), and object_store's InMemory store clones the whole listing, so a
# broker's fetch cost grows with the data it holds. The two patches beside this script
# list from the fetch offset:
# InMemory gains a ranged list_with_offset, tansu's object-store wrappers forward it,
# and fetch calls it with the key before the requested offset. Run the benchmarks on it
# with TANSU_BINARY="$(scripts/tansu-fetch-patched.sh)" scripts/bench-e2e.sh ...
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${STAGESTREAM_CACHE:-$HOME/.cache/stagestream}"
root="$cache/tansu-0.6.0-fetch-patched"
binary="$root/bin/tansu"

if [[ ! -x "$binary" ]]; then
    echo "building patched tansu 0.6.0 into $root (9-20 minutes on the 2-core VMs)" >&2
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    for crate in tansu-0.6.0 tansu-storage-0.6.0 object_store-0.13.1; do
        curl -sSfL "https://static.crates.io/crates/${crate%-*}/$crate.crate" | tar -xz -C "$src"
    done
    patch -d "$src/tansu-storage-0.6.0" -p1 <"$here/tansu-fetch-patch/tansu-storage-0.6.0.patch" >&2
    patch -d "$src/object_store-0.13.1" -p1 <"$here/tansu-fetch-patch/object_store-0.13.1.patch" >&2
    cat >>"$src/tansu-0.6.0/Cargo.toml" <<'TOML'

[patch.crates-io]
object_store = { path = "../object_store-0.13.1" }
tansu-storage = { path = "../tansu-storage-0.6.0" }
TOML
    # cargo build keeps the crate's Cargo.lock but for the two patched entries.
    (cd "$src/tansu-0.6.0" && CARGO_TARGET_DIR="$src/target" \
        cargo build --release --features dynostore,libsql >&2)
    mkdir -p "$root/bin"
    cp "$src/target/release/tansu" "$binary"
fi
echo "$binary"
