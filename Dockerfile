# kubectl-hsd as a container image for linux/amd64 and linux/arm64, e.g. for the reconcile
# CronJob or the watcher Deployment:
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/paia-tech/kubectl-hsd:v0.1.0 .
#   hack/release.sh VERSION     # builds it with docker buildx or buildah, tagged v<VERSION>
#
# Build stage: runs on the build machine's own platform ($BUILDPLATFORM) and cross-compiles a
# fully static musl binary for the target ($TARGETARCH), so no emulation is needed. TLS is
# rustls + ring (no OpenSSL); ring compiles C and assembly, hence musl-tools (musl-gcc) for
# amd64 and gcc-aarch64-linux-gnu for arm64.
FROM --platform=$BUILDPLATFORM rust:1.95.0-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools gcc-aarch64-linux-gnu \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
RUN case "$TARGETARCH" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH (amd64 or arm64)" >&2; exit 1 ;; \
    esac \
 && cargo build --release --locked --target "$target" --bin kubectl-hsd \
 && if readelf -d "target/$target/release/kubectl-hsd" | grep -q NEEDED; then \
      echo "kubectl-hsd is not statically linked" >&2; exit 1; \
    fi \
 && mkdir -p /out && cp "target/$target/release/kubectl-hsd" /out/kubectl-hsd

# Runtime stage: no shell, no libc, non-root.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/kubectl-hsd /usr/local/bin/kubectl-hsd
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-hsd"]
