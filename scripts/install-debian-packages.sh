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
  openvswitch-switch ethtool
  # the lab's trust boundary: nft for the management guard and device anti-spoofing;
  # libvirt's nwfilter (clean-traffic on VM NICs) drives ebtables/iptables (-nft variants)
  nftables iptables libvirt-daemon-config-nwfilter
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
# Packages such as libvirt-daemon-system, prometheus and openvswitch-switch start their
# system-wide services on install; the lab runs its own daemons per node, so keep the
# package scripts from starting anything (policy-rc.d 101 = action forbidden).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
