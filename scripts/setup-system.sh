#!/usr/bin/env bash
# System set-up for novalite on Debian/Ubuntu, idempotent: packages, then the
# libvirt daemons when no service manager runs them. Run as root or with sudo.
set -euo pipefail

PKGS="libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
qemu-system-x86 qemu-utils dnsmasq-base iptables python3-venv python3-dev gcc mmdebstrap"
# `--test`: what the suite adds (the dashboard's tests drive Debian's headless Chromium).
if [ "${1:-}" = "--test" ]; then
  PKGS="$PKGS chromium chromium-driver"
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# /dev/kvm without udev (containers) stays root:root 0600. libvirtd then probes
# QEMU with root's capabilities (KVM found) but checks "can the qemu user open
# /dev/kvm?" (no) before trusting its capabilities cache, so it discards the
# cache and re-probes QEMU on EVERY API call (~4 s each; a failed spawn ~52 s).
# Give the node the group and mode udev gives it on a normal host: both checks
# agree and the cache sticks. Guests still run TCG with virt_type = "qemu".
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
  $SUDO chgrp kvm /dev/kvm
  $SUDO chmod 0660 /dev/kvm
fi

# libvirtd and virtlogd: start them ourselves when nothing else does.
if ! virsh -c qemu:///system version >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl start virtlogd libvirtd
  else
    pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
    pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
  fi
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
  virsh -c qemu:///system version >/dev/null
fi
