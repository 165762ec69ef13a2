#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages roomscribe needs, only those that are missing.
# Usage: scripts/install-system-deps.sh PACKAGE...
set -euo pipefail
wanted=("$@")
# Python's venv module and headers are separate packages on Debian; check the interpreter
# we will use rather than assuming.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then wanted+=(python3-venv); fi
include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$include/Python.h" ]; then wanted+=(python3-dev); fi
if ! command -v gcc >/dev/null 2>&1; then wanted+=(gcc); fi
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "roomscribe: please install these packages with your package manager: ${missing[*]}" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "roomscribe: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
