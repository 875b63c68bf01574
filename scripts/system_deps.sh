#!/usr/bin/env bash
# Debian packages the tests need beyond Python: a C/C++ toolchain, cmake and patch
# (llama.cpp is built from the llama-cpp-python sdist), Node with npm (transformers.js) and
# Chromium (the browser tests drive it headless through puppeteer-core; never downloaded by
# npm). Installs only what is missing; needs root (or sudo) for apt-get.
set -euo pipefail
declare -A PKG=([cc]=build-essential [c++]=build-essential [make]=build-essential [cmake]=cmake
                [ninja]=ninja-build [patch]=patch [node]=nodejs [npm]=npm [git]=git
                [chromium]=chromium)
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "error: missing ${missing[*]}; install them with apt-get (as root), then rerun" >&2; exit 2
  fi
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
