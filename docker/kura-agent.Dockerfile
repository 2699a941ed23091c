# syntax=docker/dockerfile:1.7
#
# The kura-agent image. Build from the repository root:
#
#   docker buildx build -f docker/kura-agent.Dockerfile -t ghcr.io/kura-dev/kura-agent:0.1.0 .
#   docker buildx build -f docker/kura-agent.Dockerfile --platform linux/amd64,linux/arm64 ...
#
# A static-pie glibc release binary on distroless/cc. Static because the agent also runs inside
# app containers: for pods with environment variables (kura.dev/env.*), it copies itself into
# a volume and runs as `kura-agent exec` in images of any libc, or none (Alpine, scratch). glibc
# 2.36 resolves names (files, dns) without loading NSS modules. No shell, no package manager;
# CA certificates and /etc/passwd with the nonroot user come with the base. The test command
# builds the binary the same way and runs the image (docs/images.md).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir across builds without putting them in a
# layer. --locked: the image is built from exactly the reviewed Cargo.lock. Built natively on
# each platform (emulated when it is not the host's): aws-lc-sys compiles C.
# --target (the build platform's own) keeps RUSTFLAGS off build scripts and proc macros.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    host="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --profile agent --locked -p kura-agent --bin kura-agent --target "$host" \
 && cp "target/$host/agent/kura-agent" /kura-agent

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
