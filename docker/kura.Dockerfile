# syntax=docker/dockerfile:1.7
#
# The kura webhook and CLI. Build from the repository root:
#
#   docker buildx build -f docker/kura.Dockerfile -t ghcr.io/kura-dev/kura:0.1.0 .
#   docker buildx build -f docker/kura.Dockerfile --platform linux/amd64,linux/arm64 ...
#
# A static musl binary on distroless/static: no libc to patch, no shell or package manager
# for an attacker to use, CA certificates and /etc/passwd with the nonroot user included.

FROM rust:1.95-bookworm AS build
# Set by buildx from --platform. The build runs on the target platform (emulated when it is
# not the host's) rather than cross-compiling, because aws-lc-sys compiles C and Debian's
# musl-tools only targets the host architecture.
ARG TARGETARCH=amd64
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools cmake \
 && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir across builds without putting them in a
# layer. --locked: the image is built from exactly the reviewed Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --target "$target" -p kura --bin kura \
 && cp "target/$target/release/kura" /kura

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/kura-dev/kura" \
      org.opencontainers.image.title="kura" \
      org.opencontainers.image.description="Admission webhook keeping AWS Secrets Manager secrets out of Kubernetes manifests" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /kura /kura
# Numeric, so that runAsNonRoot can verify it without resolving a name.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/kura"]
CMD ["serve"]
