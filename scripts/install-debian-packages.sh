#!/usr/bin/env bash
# Installs the Debian packages edgeIoT needs on the orchestrator machine / lab-in-a-box host.
# Idempotent: apt-get skips what is already installed.
set -euo pipefail
packages=(
  qemu-system-x86 qemu-utils
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients libvirt-dev
  pkg-config gcc python3-dev python3-venv
  busybox-static cpio gzip binutils kmod iproute2 util-linux procps
  openssh-server openssh-client prometheus
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "debian packages: all present"
  exit 0
fi
echo "debian packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
