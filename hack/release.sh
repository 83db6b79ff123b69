#!/usr/bin/env bash
# hack/release.sh VERSION - cuts a release of kubectl-hsd on this machine.
#
#   1. Checks that VERSION is the crate version (Cargo.toml): the image tag v<VERSION>, the
#      default `install --image` and the chart's appVersion all follow the crate version.
#   2. Builds static release binaries (kubectl-hsd and kubectl_complete-hsd) for
#      linux/amd64 and linux/arm64 (musl), darwin/amd64 and darwin/arm64 (only where an Apple
#      linker exists, i.e. on macOS) and windows/amd64 (mingw-w64), installing the Rust targets
#      with rustup and the cross C compilers with apt-get when they are missing. A platform that
#      cannot be built is skipped and named at the end.
#   3. Packs each into target/dist/v<VERSION>/kubectl-hsd_v<VERSION>_<os>_<arch>.tar.gz (.zip on
#      windows) with LICENSE at the root, writes SHA256SUMS, and rewrites krew-manifest/hsd.yaml:
#      version, one platform per archive with its sha256 (platforms that were not built are left
#      out, so the manifest never carries a digest that matches nothing).
#   4. Validates the manifest with krew's own validate-krew-manifest and krew (built from krew's
#      Go module; the archives are served to krew on 127.0.0.1 only) and with
#      tests/krew_manifest.rs.
#   5. Builds the image for linux/amd64 and linux/arm64 from the Dockerfile, tagged
#      ghcr.io/paia-tech/kubectl-hsd:v<VERSION>, with docker buildx or buildah when one of them
#      works here, and says so when neither does. Pushing is left to the person releasing
#      (`--push` passes it on to docker buildx / `buildah manifest push`).
#
# Usage: hack/release.sh VERSION [--push] [--skip-image]
# Environment: HSD_RELEASE_TARGETS (default: all five, e.g. "linux/amd64 linux/arm64"),
#              HSD_IMAGE_REPOSITORY (default ghcr.io/paia-tech/kubectl-hsd),
#              CARGO_TARGET_DIR (where cargo builds; default target/).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
log() { printf 'release.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -ge 1 ]] || die "usage: hack/release.sh VERSION [--push] [--skip-image]"
VERSION=${1#v}
shift
PUSH=false
SKIP_IMAGE=false
for arg in "$@"; do
  case $arg in
    --push) PUSH=true ;;
    --skip-image) SKIP_IMAGE=true ;;
    *) die "unknown argument $arg" ;;
  esac
done
CRATE_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[[ $VERSION == "$CRATE_VERSION" ]] ||
  die "VERSION $VERSION is not the crate version $CRATE_VERSION: set version in Cargo.toml first (the image tag and the default --image follow it)"
TAG="v$VERSION"
REPOSITORY=${HSD_IMAGE_REPOSITORY:-ghcr.io/paia-tech/kubectl-hsd}
IMAGE="$REPOSITORY:$TAG"
DIST="$REPO_ROOT/target/dist/$TAG"
URL_BASE="https://github.com/paia-tech/kubectl-hsd/releases/download/$TAG"
rm -rf "$DIST"
mkdir -p "$DIST/local"

# os/arch -> Rust target.
declare -A RUST_TARGET=(
  [linux/amd64]=x86_64-unknown-linux-musl
  [linux/arm64]=aarch64-unknown-linux-musl
  [darwin/amd64]=x86_64-apple-darwin
  [darwin/arm64]=aarch64-apple-darwin
  [windows/amd64]=x86_64-pc-windows-gnu
)
PLATFORMS=(${HSD_RELEASE_TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64})
BUILT=()
SKIPPED=()

apt_install() {
  command -v apt-get >/dev/null || return 1
  local sudo_cmd=()
  [[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { "${sudo_cmd[@]}" apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

# The C compiler and linker of a target (ring compiles C), installed when missing; prints the
# environment for cargo, or fails with the reason.
toolchain_env() {
  local platform=$1 target=${RUST_TARGET[$1]}
  local env_target=${target//-/_}
  local upper=${env_target^^}
  case $platform in
    linux/amd64)
      command -v musl-gcc >/dev/null || apt_install musl-tools || { echo "no musl-gcc (apt-get install musl-tools failed)"; return 1; }
      echo "CC_$env_target=musl-gcc"
      ;;
    linux/arm64)
      command -v aarch64-linux-gnu-gcc >/dev/null || apt_install gcc-aarch64-linux-gnu ||
        { echo "no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu failed)"; return 1; }
      echo "CC_$env_target=aarch64-linux-gnu-gcc"
      echo "CARGO_TARGET_${upper}_LINKER=aarch64-linux-gnu-gcc"
      ;;
    darwin/*)
      # The binary links Apple's Security and CoreFoundation frameworks (rustls' platform
      # verifier): that needs Apple's SDK and linker, which only macOS has.
      [[ $(uname -s) == Darwin ]] || { echo "needs macOS (Apple's SDK and linker for Security.framework); run this script on a Mac for darwin"; return 1; }
      ;;
    windows/amd64)
      command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64 ||
        { echo "no x86_64-w64-mingw32-gcc (apt-get install gcc-mingw-w64-x86-64 failed)"; return 1; }
      echo "CC_$env_target=x86_64-w64-mingw32-gcc"
      echo "CARGO_TARGET_${upper}_LINKER=x86_64-w64-mingw32-gcc"
      ;;
  esac
}

build_platform() {
  local platform=$1 target=${RUST_TARGET[$1]}
  local os=${platform%/*} arch=${platform#*/}
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    log "$platform: rustup target add $target"
    rustup target add "$target" >/dev/null 2>&1 ||
      { SKIPPED+=("$platform: cannot install the Rust target $target (is the rustup dist server reachable?)"); return; }
  fi
  local env_lines
  if ! env_lines=$(toolchain_env "$platform"); then
    SKIPPED+=("$platform: $env_lines")
    return
  fi
  local cargo_env=()
  [[ -n $env_lines ]] && mapfile -t cargo_env <<<"$env_lines"
  log "$platform: cargo build --release --target $target"
  if ! env "${cargo_env[@]}" cargo build --release --locked --target "$target" \
    --bin kubectl-hsd --bin kubectl_complete-hsd >"$DIST/build-$os-$arch.log" 2>&1; then
    SKIPPED+=("$platform: cargo build failed (see $DIST/build-$os-$arch.log)")
    return
  fi
  local exe="" out="${CARGO_TARGET_DIR:-target}/$target/release"
  [[ $os == windows ]] && exe=.exe
  if [[ $os == linux ]] && readelf -d "$out/kubectl-hsd" 2>/dev/null | grep -q NEEDED; then
    SKIPPED+=("$platform: kubectl-hsd is not statically linked")
    return
  fi
  local stage="$DIST/stage-$os-$arch" archive
  mkdir -p "$stage"
  cp "$out/kubectl-hsd$exe" "$out/kubectl_complete-hsd$exe" LICENSE "$stage/"
  if [[ $os == windows ]]; then
    archive="kubectl-hsd_${TAG}_${os}_${arch}.zip"
    command -v zip >/dev/null || apt_install zip || { SKIPPED+=("$platform: no zip"); return; }
    (cd "$stage" && zip -q -X "$DIST/$archive" ./*)
  else
    archive="kubectl-hsd_${TAG}_${os}_${arch}.tar.gz"
    # Reproducible: fixed owner, order and mtime.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' \
      -C "$stage" -cf - kubectl-hsd kubectl_complete-hsd LICENSE | gzip -n >"$DIST/$archive"
  fi
  rm -rf "$stage"
  BUILT+=("$platform $archive")
  log "$platform: $DIST/$archive"
}

for platform in "${PLATFORMS[@]}"; do
  [[ -n ${RUST_TARGET[$platform]:-} ]] || die "unknown platform $platform"
  build_platform "$platform"
done
((${#BUILT[@]})) || die "no platform could be built: ${SKIPPED[*]}"

(cd "$DIST" && shopt -s nullglob && sha256sum ./*.tar.gz ./*.zip | sed 's| \./| |' >SHA256SUMS)

# The krew manifest: every built archive with its digest.
write_manifest() {
  cat <<EOF
# krew plugin manifest for \`kubectl hsd\` (install: \`kubectl krew install hsd\`).
#
# Written by hack/release.sh $VERSION: each platform's sha256 is that of the archive the script
# built (target/dist/$TAG/SHA256SUMS); platforms it could not build are left out.
# Each archive holds, at its root: kubectl-hsd (kubectl-hsd.exe on windows), the completion
# helper kubectl_complete-hsd, and LICENSE.
# tests/krew_manifest.rs checks this file against krew's validation rules.
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: hsd
spec:
  version: $TAG
  homepage: https://github.com/paia-tech/kubectl-hsd
  shortDescription: Hot-standby buffer of idle, warm pods
  description: |
    Keeps hot-standby capacity on Kubernetes. A HotStandbyDeployment owns a
    child Deployment that always runs
    clamp(busyPods + idleTarget, minReplicas, maxReplicas) replicas, so a
    constant number of idle, warm pods is ready to take new work.
    The plugin installs the CRD, creates and inspects HotStandbyDeployments,
    marks pods busy or idle, and runs the reconcile pass (also as a CronJob).
    For completion of \`kubectl hsd <TAB>\`, link kubectl_complete-hsd from
    the plugin's directory into your PATH (krew does not link it itself).
  platforms:
EOF
  local entry platform archive os arch sha exe
  for entry in "${BUILT[@]}"; do
    platform=${entry% *}
    archive=${entry#* }
    os=${platform%/*}
    arch=${platform#*/}
    sha=$(sha256sum "$DIST/$archive" | cut -d' ' -f1)
    exe=""
    [[ $os == windows ]] && exe=.exe
    cat <<EOF
    - selector:
        matchLabels:
          os: $os
          arch: $arch
      uri: $URL_BASE/$archive
      sha256: "$sha"
      files:
        - from: kubectl-hsd$exe
          to: .
        - from: kubectl_complete-hsd$exe
          to: .
        - from: LICENSE
          to: .
      bin: kubectl-hsd$exe
EOF
  done
}
write_manifest >"$DIST/hsd.yaml"
cp "$DIST/hsd.yaml" krew-manifest/hsd.yaml
log "krew-manifest/hsd.yaml: ${#BUILT[@]} platform(s) with their sha256"

# Check the manifest: krew's own validate-krew-manifest and krew itself, both built from krew's
# Go module, and this repository's rules (tests/krew_manifest.rs). The validator installs every
# platform with `kubectl krew install --manifest`, which downloads the archive: a copy of the
# manifest points at the archives served from this directory on 127.0.0.1.
krew_note=""
KREW_VERSION=v0.4.3
TOOLS="$REPO_ROOT/target/tools/bin"
KUBECTL=$(command -v kubectl || true)
for candidate in "${HSD_BIN_DIR:-$HOME/.cache/kubectl-hsd/bin}"/*/kubectl; do
  [[ -z $KUBECTL && -x $candidate ]] && KUBECTL=$candidate
done
if [[ -z $KUBECTL ]]; then
  krew_note="no kubectl to run krew with (hack/cluster.sh build k8s makes one); tests/krew_manifest.rs only"
elif ! { [[ -x $TOOLS/validate-krew-manifest && -x $TOOLS/kubectl-krew ]] ||
  { GOBIN="$TOOLS" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/krew/cmd/validate-krew-manifest@$KREW_VERSION" &&
    GOBIN="$TOOLS" GOFLAGS=-buildvcs=false go install "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION" &&
    mv "$TOOLS/krew" "$TOOLS/kubectl-krew"; } >"$DIST/krew-build.log" 2>&1; }; then
  krew_note="krew $KREW_VERSION could not be built from its Go module (see $DIST/krew-build.log); tests/krew_manifest.rs only"
else
  mkdir -p "$DIST/local/kubectl"
  ln -sf "$KUBECTL" "$DIST/local/kubectl/kubectl"
  port_file="$DIST/local/port"
  python3 - "$DIST" "$port_file" <<'PY' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
open(sys.argv[2], "w").write(str(server.server_address[1]))
server.timeout = 1
import time
deadline = time.time() + 600
while time.time() < deadline:
    server.handle_request()
PY
  server_pid=$!
  for _ in $(seq 50); do [[ -s $port_file ]] && break; sleep 0.1; done
  sed "s|uri: $URL_BASE/|uri: http://127.0.0.1:$(cat "$port_file")/|" "$DIST/hsd.yaml" >"$DIST/local/hsd.yaml"
  if PATH="$TOOLS:$DIST/local/kubectl:$PATH" "$TOOLS/validate-krew-manifest" -manifest "$DIST/local/hsd.yaml" \
    >"$DIST/krew-validator.log" 2>&1; then
    krew_note="validate-krew-manifest (krew $KREW_VERSION) passed: structure, selectors, and a real krew install of every platform with its sha256"
  else
    kill "$server_pid" 2>/dev/null || true
    die "validate-krew-manifest rejected the manifest: see $DIST/krew-validator.log"
  fi
  kill "$server_pid" 2>/dev/null || true
fi
HSD_KREW_MANIFEST="$DIST/hsd.yaml" cargo test --quiet --locked --test krew_manifest >"$DIST/krew-rules.log" 2>&1 ||
  die "the manifest breaks tests/krew_manifest.rs: see $DIST/krew-rules.log"

# The image, for both Linux architectures.
image_note=""
if $SKIP_IMAGE; then
  image_note="skipped (--skip-image)"
elif command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
  # A two-platform image cannot be loaded into the local engine: it is pushed, or stays in
  # buildx's cache.
  output=()
  if $PUSH; then output=(--push); fi
  if docker buildx build --platform linux/amd64,linux/arm64 -t "$IMAGE" "${output[@]}" .; then
    image_note="$IMAGE (linux/amd64, linux/arm64) built with docker buildx"
    if $PUSH; then image_note+=", pushed"; fi
  else
    image_note="docker buildx failed"
  fi
elif command -v buildah >/dev/null && buildah info >/dev/null 2>&1; then
  buildah manifest rm "$IMAGE" >/dev/null 2>&1 || true
  if buildah build --platform linux/amd64,linux/arm64 --manifest "$IMAGE" .; then
    image_note="$IMAGE (linux/amd64, linux/arm64) built with buildah"
    if $PUSH && buildah manifest push --all "$IMAGE" "docker://$IMAGE"; then image_note+=", pushed"; fi
  else
    image_note="buildah failed"
  fi
else
  reasons=()
  if command -v docker >/dev/null; then
    docker info >/dev/null 2>&1 || reasons+=("docker is installed but no Docker daemon answers")
  else
    reasons+=("no docker")
  fi
  if command -v buildah >/dev/null; then reasons+=("buildah cannot run here"); else reasons+=("no buildah"); fi
  image_note="NOT built: $(IFS=';'; echo "${reasons[*]}"). Build it where one works: hack/release.sh $VERSION --push"
fi

echo
echo "Release $TAG in $DIST:"
(cd "$DIST" && ls -l ./*.tar.gz ./*.zip 2>/dev/null | awk '{print "  " $NF " (" $5 " bytes)"}')
echo "  SHA256SUMS, hsd.yaml (also written to krew-manifest/hsd.yaml)"
echo "Krew manifest: $krew_note"
echo "Image: $image_note"
if ((${#SKIPPED[@]})); then
  echo "Not built:"
  printf '  %s\n' "${SKIPPED[@]}"
fi
