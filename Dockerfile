# syntax=docker/dockerfile:1
#
# One image with both runfleet binaries; the container's command picks which one runs
# (compose.yaml runs two orchestrators and two worker nodes from it):
#
#   docker build -t runfleet .
#   docker run --rm -e RUNFLEET__REDIS__URL=... -e RUNFLEET__SECURITY__CREDENTIALS_KEY=... runfleet runfleet-orchestrator
#
# All configuration comes from RUNFLEET__SECTION__KEY environment variables at run time. The
# image carries no secrets and no default keys: each deployment must bring its own.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies from one build to the next,
# so a code change does not rebuild every dependency. Because target/ is a cache mount and not
# part of the layer, the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p runfleet-orchestrator -p runfleet-worker-node \
    && mkdir -p /out \
    && cp target/release/runfleet-orchestrator target/release/runfleet-worker-node /out/

FROM debian:bookworm-slim
# ca-certificates: for TLS connections out of the container (rediss://, amqps://, HTTPS).
# python3: the interpreter of external strategies written in Python (docs/strategy-protocol.md),
# with the SDK and its examples under /opt/runfleet/sdk (register e.g. command =
# "/usr/bin/python3", args = ["/opt/runfleet/sdk/python/examples/sma_cross.py"]).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/*
# A fixed, numeric non-root user: orchestrators may run with runAsNonRoot-style checks, which
# need a number, and files on mounted volumes keep a predictable owner.
RUN groupadd --system --gid 10001 runfleet \
    && useradd --system --uid 10001 --gid runfleet --no-create-home --shell /usr/sbin/nologin runfleet
COPY --from=builder /out/runfleet-orchestrator /out/runfleet-worker-node /usr/local/bin/
COPY sdk /opt/runfleet/sdk
USER 10001:10001
# The built-in default, 127.0.0.1:8080, cannot be reached from outside the container.
ENV RUNFLEET__HTTP__BIND=0.0.0.0:8080
EXPOSE 8080
CMD ["runfleet-orchestrator"]
