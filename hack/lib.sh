#!/usr/bin/env bash
# hack/lib.sh - set-up shared by hack/test.sh, hack/demo.sh and hack/bench.sh (sourced, not run).

# ensure_tools COMMAND:PACKAGE... - installs, with the machine's package manager, the Debian packages
# of the commands that are missing (a clean clone is not a fresh machine), then checks for the
# toolchains the project builds with.
ensure_tools() {
  local tool missing=()
  for tool in "$@"; do
    if [[ ${tool%%:*} == /* ]]; then
      [[ -e ${tool%%:*} ]] || missing+=("${tool#*:}")
    else
      command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
    fi
  done
  if ((${#missing[@]})); then
    printf '%s: installing %s\n' "$(basename "$0")" "${missing[*]}" >&2
    local sudo_cmd=()
    [[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v go >/dev/null || { echo "error: Go is required (the control plane is built from Go modules)" >&2; exit 1; }
  command -v cargo >/dev/null || { echo "error: cargo is required" >&2; exit 1; }
}
