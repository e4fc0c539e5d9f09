# sentinel-gateway as a container: built in a Rust image, run in a small one as a non-root user.
#
#   docker build -t sentinel-gateway .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=postgres://… -e SECRET_KEY=… \
#     -v "$PWD/conf/gateway.toml:/etc/sentinel-gateway/gateway.toml:ro" sentinel-gateway
#
# The runtime image holds the binary, its configuration and nothing else: no shell, no package
# manager. The health check is the binary's own `health` command (GET /health on the listener).

FROM rust:1.95-bookworm AS build
# pingora's zlib-ng needs cmake.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in a layer of their own: a change to the gateway's code reuses it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/demo-upstream.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin sentinel-gateway \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
# The stub's build products are older than the sources: touch so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin sentinel-gateway \
    && strip target/release/sentinel-gateway

# glibc, libgcc, CA certificates and a `nonroot` user (uid and gid 65532), and nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sentinel-gateway /usr/local/bin/sentinel-gateway
COPY conf/gateway.toml /etc/sentinel-gateway/gateway.toml
# Listen on every interface of the container; metrics on a port of their own (publish it only
# to the scraper, never with the public port). The runtime directory holds the pid file and the
# upgrade socket.
ENV SENTINEL_LISTEN=0.0.0.0:8000 \
    SENTINEL_ADMIN_LISTEN=0.0.0.0:9091 \
    SENTINEL_RUNTIME_DIR=/tmp/sentinel-gateway \
    SENTINEL_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8000 9091
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/sentinel-gateway", "--config", "/etc/sentinel-gateway/gateway.toml", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sentinel-gateway", "--config", "/etc/sentinel-gateway/gateway.toml"]
CMD ["serve"]
