# syntax=docker/dockerfile:1
#
# prosperstack-relay container image.
#
#   docker build -t prosperstack-relay .
#   docker run -p 8080:8080 -v relay-data:/data -e PROSPERSTACK_API_KEY=key_... prosperstack-relay
#
# Two stages: a Rust builder, then a runtime that holds only the binary and an empty /data.

# ---------------------------------------------------------------------------------------------
# Builder. The official Rust image on Debian 12, pinned to the toolchain the project is tested
# with; the runtime below is Debian 12 too, so the binary links against the same glibc.
FROM rust:1.95-bookworm AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# Dependencies first, in their own layer: this one is rebuilt only when a manifest or
# Cargo.lock changes, not on every source edit. The workspace is built once with dummy
# sources (the relay, and the sandbox crate it links; the bench crate is not part of the
# image but must exist for the workspace to load). Targets declared explicitly in the root
# manifest ([[bench]], [[test]], [[example]], [[bin]]) would make cargo look for their
# files, which are not copied yet, so they are dropped from this throwaway copy of it.
COPY Cargo.toml Cargo.lock ./
COPY crates/prosperstack-sandbox/Cargo.toml crates/prosperstack-sandbox/
COPY crates/relay-bench/Cargo.toml crates/relay-bench/
RUN awk '/^\[\[(bin|bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.deps.toml \
    && mv Cargo.deps.toml Cargo.toml \
    && mkdir -p src crates/prosperstack-sandbox/src crates/relay-bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && : > crates/prosperstack-sandbox/src/lib.rs \
    && echo 'fn main() {}' > crates/relay-bench/src/main.rs \
    && cargo build --release --locked -p prosperstack-relay \
    && rm -rf src crates/*/src

# The real sources (.dockerignore keeps target/, .git and data/ out, so the layer above is not
# clobbered by a host's build directory). COPY keeps the files' own mtimes, which can be older
# than the dummy build: cargo would then think the crates are fresh and ship the dummy binary.
# Touching every source makes them newer, so our crates are rebuilt, and only they.
# The last line fails the build if the result is still the dummy (it lists no subcommands).
COPY . .
RUN find src crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p prosperstack-relay \
    && target/release/prosperstack-relay --help | grep healthcheck > /dev/null \
    && install -D -m 0755 target/release/prosperstack-relay /out/prosperstack-relay \
    && install -d -m 0750 /out/data

# ---------------------------------------------------------------------------------------------
# Runtime: distroless "cc" rather than debian:bookworm-slim. It has exactly what a Rust binary
# links against (glibc, libgcc_s) and no shell, package manager or setuid tools to patch or
# exploit. Nothing else is needed: TLS is rustls with compiled-in webpki roots (no CA bundle),
# SQLite is compiled in (rusqlite "bundled"), and the health check is the binary's own
# `healthcheck` subcommand (no curl). The :nonroot variant already defines user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="prosperstack-relay" \
      org.opencontainers.image.description="Segment Identify webhook in, ProsperStack subscriber custom properties out" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/prosperstack-relay /usr/local/bin/prosperstack-relay
# The durable queue lives here. A named volume or PersistentVolume mounted at /data starts as
# a copy of this directory, so it is owned by the runtime user too.
COPY --from=builder --chown=65532:65532 /out/data /data

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532

ENV RELAY_DATA_DIR=/data \
    RELAY_LISTEN=0.0.0.0:8080

EXPOSE 8080
VOLUME /data

# On SIGTERM the relay drains for up to RELAY_DRAIN_DEADLINE (20 s by default): give it more
# than that (`docker stop -t 30`, compose stop_grace_period, Kubernetes grace period).
STOPSIGNAL SIGTERM

# GETs /healthz on the address in RELAY_LISTEN (0.0.0.0 read as 127.0.0.1); exit 0 on 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/prosperstack-relay", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/prosperstack-relay"]
CMD ["serve"]
