# syntax=docker/dockerfile:1
# stagestream: multi-stage build. The builder compiles the release binary (librdkafka is
# built from source by rdkafka-sys, so it needs a C toolchain and make); the runtime
# is Debian slim with only the shared libraries the binary links (OpenSSL for TLS to
# the brokers) and runs as an unprivileged user.
#   docker build -t stagestream:0.1.0 .
#   docker run --rm stagestream:0.1.0 --help

FROM rust:1.95-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild them: empty stand-ins for the
# library, the binary and every [[bench]] Cargo.toml names (cargo refuses a manifest
# whose targets are missing). .cargo/config.toml holds jemalloc's build options.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n '/^\[\[bench\]\]/{n;s/^name = "\(.*\)"/\1/p}' Cargo.toml); do \
         echo 'fn main() {}' > benches/$bench.rs; done \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin stagestream

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /src/target/release/stagestream /usr/local/bin/stagestream
COPY config/presets /etc/stagestream/presets
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/stagestream"]
CMD ["run", "--config", "/etc/stagestream/stagestream.toml"]
