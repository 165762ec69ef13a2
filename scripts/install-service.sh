#!/usr/bin/env bash
# Installs roomscribe as a systemd service (what `sudo make install` runs; docs/install.md).
#
#   PREFIX  where the program lives (default /opt/roomscribe): its own venv, not this checkout
#   ROOT    a staging root for packaging or tests (default /): files go under it, nothing starts
#   VENV    "build" (default) makes $PREFIX/.venv with torch and the project; "skip" does not
#
# Never overwrites /etc/roomscribe/config.toml or the password file; run it again to upgrade.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/opt/roomscribe}
ROOT=${ROOT:-/}
VENV=${VENV:-build}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
root=${ROOT%/}
etc="$root/etc/roomscribe"
unit_dir="$root/etc/systemd/system"

if [ "$VENV" = build ]; then
  install -d "$root$PREFIX"
  python3 -m venv "$root$PREFIX/.venv"
  "$root$PREFIX/.venv/bin/pip" install --quiet --upgrade pip
  "$root$PREFIX/.venv/bin/pip" install --quiet "torch==$TORCH_VERSION"
  "$root$PREFIX/.venv/bin/pip" install --quiet "$here"
  install -d "$root$PREFIX/docs"
  cp -r "$here/docs/." "$root$PREFIX/docs/"
fi

install -d -m 0755 "$etc"
if [ ! -e "$etc/config.toml" ]; then
  install -m 0644 "$here/config.toml" "$etc/config.toml"
  install -d "$etc/samples"
  install -m 0644 "$here/samples/demo.flac" "$etc/samples/demo.flac"
  echo "roomscribe: wrote $etc/config.toml (edit the broker and the rooms)"
fi
# The MQTT password and HTTP token files, root-only; systemd hands them to the service as credentials.
for secret in mqtt-password http-token; do
  if [ ! -e "$etc/$secret" ]; then
    install -m 0600 /dev/null "$etc/$secret"
  fi
done

install -d "$unit_dir"
sed "s|/opt/roomscribe|$PREFIX|g" "$here/systemd/roomscribe.service" > "$unit_dir/roomscribe.service"
chmod 0644 "$unit_dir/roomscribe.service"
# A GPU, when the machine has one: its device nodes in the sandbox.
if [ -e /dev/nvidiactl ]; then
  install -d "$unit_dir/roomscribe.service.d"
  install -m 0644 "$here/systemd/roomscribe-gpu.conf" "$unit_dir/roomscribe.service.d/gpu.conf"
  echo "roomscribe: NVIDIA GPU found; installed the GPU drop-in"
fi

if [ "$root" = "" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now roomscribe.service
  echo "roomscribe: started; follow it with: journalctl -u roomscribe -f"
else
  echo "roomscribe: installed under ${ROOT}; not started (no systemd here, or a staging root)"
fi
