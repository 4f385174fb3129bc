# syntax=docker/dockerfile:1
# One build, one small image per binary:
#   docker build --target workflow-service -t thygon/workflow-service .
# Targets: workflow-service, runtime-service, executor-worker, support-agent (the example agent).
# Each image runs as an unprivileged user (uid 10001), listens on 0.0.0.0 (HTTP_ADDR) and has
# curl for container health checks (docker-compose.yml probes /readyz with it; Kubernetes
# probes over HTTP and does not need it). `workflow-service migrate` (the workflow-service
# image with the argument `migrate`) applies the database migrations and exits.
#
# Build caching, without BuildKit cache mounts (so it also works with the classic builder
# and with registry layer caches in CI):
#   1. `deps`: only the manifests (Cargo.toml, Cargo.lock) and stub sources; builds every
#      dependency. This layer is reused until a manifest or the lock file changes.
#   2. `build`: the real sources on top; only the workspace crates are compiled.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# The packages whose binaries ship in the images (e2e is a test crate, never built here).
ARG PACKAGES="-p workflow-service -p runtime-service -p executor-worker -p support-agent"

# ---- dependencies ---------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS deps
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0
ARG PACKAGES
COPY Cargo.toml Cargo.lock ./
COPY shared-models/Cargo.toml shared-models/
COPY workflow-service/Cargo.toml workflow-service/
COPY runtime-service/Cargo.toml runtime-service/
COPY executor-worker/Cargo.toml executor-worker/
COPY examples/support-agent/Cargo.toml examples/support-agent/
COPY e2e/Cargo.toml e2e/
# Stub sources with the same targets as the real crates (lib.rs and/or main.rs), so cargo
# resolves the workspace and compiles every dependency, and nothing of ours.
RUN set -eu; \
    for crate in shared-models workflow-service runtime-service executor-worker e2e; do \
        mkdir -p "$crate/src" && : > "$crate/src/lib.rs"; \
    done; \
    for crate in workflow-service runtime-service executor-worker examples/support-agent; do \
        mkdir -p "$crate/src" && echo 'fn main() {}' > "$crate/src/main.rs"; \
    done; \
    cargo build --release --locked $PACKAGES --bins

# ---- the workspace --------------------------------------------------------------------------
FROM deps AS build
ARG PACKAGES
COPY . .
# COPY keeps the files' own modification times, which can be older than the stubs' build;
# touch them so cargo rebuilds our crates from the real sources.
RUN set -eu; \
    find shared-models workflow-service runtime-service executor-worker examples/support-agent e2e \
        -type f \( -name '*.rs' -o -name '*.sql' -o -name '*.toml' \) -exec touch {} +; \
    cargo build --release --locked $PACKAGES --bins; \
    mkdir -p /out; \
    cp target/release/workflow-service target/release/runtime-service \
       target/release/executor-worker target/release/support-agent /out/

# ---- common runtime base --------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libpq5 libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 thygon \
    && useradd --system --uid 10001 --gid thygon --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin thygon
ENV RUST_LOG=info
USER 10001:10001

# ---- one image per binary -------------------------------------------------------------------
FROM runtime AS workflow-service
COPY --from=build /out/workflow-service /usr/local/bin/workflow-service
ENV HTTP_ADDR=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/workflow-service"]

FROM runtime AS runtime-service
COPY --from=build /out/runtime-service /usr/local/bin/runtime-service
ENV HTTP_ADDR=0.0.0.0:8082
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/runtime-service"]

FROM runtime AS executor-worker
COPY --from=build /out/executor-worker /usr/local/bin/executor-worker
ENV HTTP_ADDR=0.0.0.0:8083
EXPOSE 8083
ENTRYPOINT ["/usr/local/bin/executor-worker"]

FROM runtime AS support-agent
COPY --from=build /out/support-agent /usr/local/bin/support-agent
ENV SUPPORT_AGENT_ADDR=0.0.0.0:9000
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/support-agent"]
