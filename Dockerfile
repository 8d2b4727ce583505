# The one txmesh image: `txmesh ingress`, `txmesh dashboard`, `txmesh txgen`,
# `txmesh health` (the exec probes), `txmesh audit`, `txmesh chaos run`.
# Build: docker build -t ghcr.io/txmesh/txmesh:0.1.0 .
# No protoc and no system TLS library: protox compiles the .proto files in
# Rust, rustls (ring) does TLS.

FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
# make builds jemalloc (tikv-jemalloc-sys) from its sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first, so a source change does not rebuild them: the
# manifests with empty crates, then the real sources.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY proto proto
COPY certs certs
COPY chaos chaos
COPY actors actors
COPY services services
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p txmesh \
 && install -D -m 0755 target/release/txmesh /out/txmesh

# distroless/cc: glibc and libgcc only, no shell, no package manager;
# :nonroot runs as uid 65532, the uid the chart's securityContext names.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/txmesh /usr/local/bin/txmesh
USER 65532:65532
# The chart mounts identities, the config and the volumes under these;
# the root filesystem stays read-only.
WORKDIR /var/lib/txmesh
EXPOSE 7443 7444 8443 9443
ENTRYPOINT ["/usr/local/bin/txmesh"]
CMD ["--help"]
