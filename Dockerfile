# syntax=docker/dockerfile:1
# One build, one small image per binary:
#   docker build --target workflow-service -t thygon/workflow-service .
# Targets: workflow-service, runtime-service, executor-worker, support-agent (the example agent).
# Each image runs as an unprivileged user (uid 10001) and listens on 0.0.0.0 (HTTP_ADDR).
# `workflow-service migrate` (the workflow-service image with the argument `migrate`) applies
# the database migrations and exits.
#
# Health checks and hooks need no tools in the image: every binary answers
# `<bin> healthcheck` (GET /readyz on the loopback, exit 0 iff 200; the HEALTHCHECK below and
# docker-compose.yml run it) and `<bin> prestop` (sleeps PRESTOP_DRAIN_SECONDS, for a
# Kubernetes preStop hook). So the runtime image carries no curl, no wget, nothing the
# processes do not use besides what the Debian base itself is made of.
#
# Base images are pinned by digest, so a build takes the same bytes until someone moves the
# pin on purpose. This repository is developed on a machine without a Docker engine: the
# digests below were not pulled there. Images are built, and so the digests checked, where a
# Docker engine runs (CI's image build, `docker compose up --build`); a digest the registry
# does not know fails the build at its first FROM. To move a pin, resolve the tag's current
# index digest and replace it here (or pass --build-arg RUST_IMAGE=... / RUNTIME_IMAGE=...):
#   docker buildx imagetools inspect rust:1-bookworm        (the "Digest:" line)
#   docker buildx imagetools inspect debian:bookworm-slim
# scripts/validate_deploy.py refuses a FROM that is not pinned by digest.
#
# Runtime base: debian:bookworm-slim with libpq5, libssl3 and ca-certificates from Debian's
# archive. A distroless base (gcr.io/distroless/cc-debian12:nonroot) would drop the shell and
# the package tools too, but libpq5 brings some twenty shared libraries (Kerberos, LDAP,
# SASL, GnuTLS, ...) that would have to be copied in by hand and kept in step; without an
# engine here to test such an image, the slim base with packages is the honest choice.
#
# Build caching, without BuildKit cache mounts (so it also works with the classic builder
# and with registry layer caches in CI):
#   1. `deps`: only the manifests (Cargo.toml, Cargo.lock) and stub sources; builds every
#      dependency. This layer is reused until a manifest or the lock file changes.
#   2. `build`: the real sources on top; only the workspace crates are compiled.

ARG RUST_IMAGE=rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e
ARG RUNTIME_IMAGE=debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
# The version in the images' labels: [workspace.package] version of Cargo.toml
# (scripts/validate_deploy.py checks they agree). REVISION: the commit, passed by CI.
ARG VERSION=0.1.0
ARG REVISION=unknown
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
COPY testkit/Cargo.toml testkit/
COPY workflow-service/Cargo.toml workflow-service/
COPY runtime-service/Cargo.toml runtime-service/
COPY executor-worker/Cargo.toml executor-worker/
COPY examples/support-agent/Cargo.toml examples/support-agent/
COPY e2e/Cargo.toml e2e/
# Stub sources with the same targets as the real crates (lib.rs and/or main.rs), so cargo
# resolves the workspace and compiles every dependency, and nothing of ours.
RUN set -eu; \
    for crate in shared-models testkit workflow-service runtime-service executor-worker e2e; do \
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
    find shared-models testkit workflow-service runtime-service executor-worker examples/support-agent e2e \
        -type f \( -name '*.rs' -o -name '*.sql' -o -name '*.toml' \) -exec touch {} +; \
    cargo build --release --locked $PACKAGES --bins; \
    mkdir -p /out; \
    cp target/release/workflow-service target/release/runtime-service \
       target/release/executor-worker target/release/support-agent /out/

# ---- common runtime base --------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION
ARG REVISION
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libpq5 libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 thygon \
    && useradd --system --uid 10001 --gid thygon --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin thygon
LABEL org.opencontainers.image.vendor="Thygon" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
ENV RUST_LOG=info
USER 10001:10001

# ---- one image per binary -------------------------------------------------------------------
FROM runtime AS workflow-service
LABEL org.opencontainers.image.title="workflow-service" \
      org.opencontainers.image.description="Thygon workflow-service: workflow definitions, their versions, orgs and API keys"
COPY --from=build /out/workflow-service /usr/local/bin/workflow-service
ENV HTTP_ADDR=0.0.0.0:8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["/usr/local/bin/workflow-service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/workflow-service"]

FROM runtime AS runtime-service
LABEL org.opencontainers.image.title="runtime-service" \
      org.opencontainers.image.description="Thygon runtime-service: creates runs, publishes their jobs, serves their progress"
COPY --from=build /out/runtime-service /usr/local/bin/runtime-service
ENV HTTP_ADDR=0.0.0.0:8082
EXPOSE 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["/usr/local/bin/runtime-service", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/runtime-service"]

FROM runtime AS executor-worker
LABEL org.opencontainers.image.title="executor-worker" \
      org.opencontainers.image.description="Thygon executor-worker: consumes run jobs and executes their steps"
COPY --from=build /out/executor-worker /usr/local/bin/executor-worker
ENV HTTP_ADDR=0.0.0.0:8083
EXPOSE 8083
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["/usr/local/bin/executor-worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/executor-worker"]

FROM runtime AS support-agent
LABEL org.opencontainers.image.title="support-agent" \
      org.opencontainers.image.description="The example agent of the Thygon demo (not part of the platform)"
COPY --from=build /out/support-agent /usr/local/bin/support-agent
ENV SUPPORT_AGENT_ADDR=0.0.0.0:9000
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
    CMD ["/usr/local/bin/support-agent", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/support-agent"]
