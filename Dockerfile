# syntax=docker/dockerfile:1
# One build, one small image per binary:
#   docker build --target workflow-service -t thygon/workflow-service .
# Targets: workflow-service, runtime-service, executor-worker, support-agent (the example agent).
# Each image runs as an unprivileged user, listens on 0.0.0.0 (HTTP_ADDR) and has curl for
# health checks. `workflow-service migrate` (the workflow-service image with the argument
# `migrate`) applies the database migrations and exits.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target/ live in BuildKit cache mounts, so a rebuild after a source
# change only recompiles the workspace crates. The binaries are copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/workflow-service target/release/runtime-service \
          target/release/executor-worker target/release/support-agent /out/

# ---- common runtime base --------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
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
