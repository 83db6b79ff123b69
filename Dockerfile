# kubectl-hsd as a container image, e.g. for the reconcile CronJob.
#
#   docker build -t kubectl-hsd .
#
# Build stage: a fully static musl binary. TLS is rustls + ring (no OpenSSL);
# ring compiles C and assembly, hence musl-tools (musl-gcc).
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
ENV CC_x86_64_unknown_linux_musl=musl-gcc
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && if readelf -d target/x86_64-unknown-linux-musl/release/kubectl-hsd | grep -q NEEDED; then \
      echo "kubectl-hsd is not statically linked" >&2; exit 1; \
    fi

# Runtime stage: no shell, no libc, non-root.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/kubectl-hsd /usr/local/bin/kubectl-hsd
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-hsd"]
