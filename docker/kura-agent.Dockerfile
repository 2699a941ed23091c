# syntax=docker/dockerfile:1.7
#
# The kura-agent image. Build from the repository root:
#
#   docker buildx build -f docker/kura-agent.Dockerfile -t ghcr.io/kura-dev/kura-agent:0.1.0 .
#   docker buildx build -f docker/kura-agent.Dockerfile --platform linux/amd64,linux/arm64 ...
#
# A glibc release binary on distroless/cc: the builder and the base are both Debian 12
# (bookworm), so the binary runs on exactly the C libraries it was linked against. No shell, no
# package manager; CA certificates and /etc/passwd with the nonroot user come with the base.
# The test command assembles the same files into a local image and runs it (docs/images.md).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir across builds without putting them in a
# layer. --locked: the image is built from exactly the reviewed Cargo.lock. Built natively on
# each platform (emulated when it is not the host's): aws-lc-sys compiles C.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kura-agent --bin kura-agent \
 && cp target/release/kura-agent /kura-agent

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/kura-dev/kura" \
      org.opencontainers.image.title="kura-agent" \
      org.opencontainers.image.description="Agent that fetches AWS Secrets Manager values into an in-memory volume and keeps them fresh" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /kura-agent /kura-agent
# Numeric, so that runAsNonRoot can verify it without resolving a name.
USER 65532:65532
ENTRYPOINT ["/kura-agent"]
CMD ["run"]
