#!/usr/bin/env bash
# A second libvirt host on this machine, for tests and for trying several hosts (issue #17).
#
#   scripts/lab-host.sh up NAME [DIR_TO_HIDE...]   start it (idempotent); prints its URI
#   scripts/lab-host.sh down NAME                  stop it and remove everything it made (idempotent)
#   scripts/lab-host.sh stop NAME                  stop its daemons only (a host gone away); `up` restarts it
#   scripts/lab-host.sh uri NAME                   print the URI of a running lab host
#
# The host is a libvirtd and a virtlogd in their own mount namespace (unshare -m), where
# /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are
# the host's own directories under $LAB_BASE/NAME (default /var/lib/novalite-lab/NAME) and
# novalite's state directory is hidden under an empty read-only tmpfs: it shares no filesystem
# view with novalite. It has its own host_uuid (libvirt refuses to migrate between daemons with
# the same one), no networks, pools or domains but its own, and libvirt's stock nwfilters.
#
# It listens for TCP on 127.0.0.1 ONLY, with auth_tcp = "none": anyone on this machine can drive
# it. For tests and trials only; a real second machine uses qemu+ssh:// or qemu+tls://.
#
# Hidden by default: $NOVALITE_STATE_DIR when set, else ./.novalite and /var/lib/novalite when
# they exist; more directories may be named after NAME. Must run as root.
set -euo pipefail

BASE="${LAB_BASE:-/var/lib/novalite-lab}"
PRIVATE_DIRS="etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt"

die() { echo "lab-host: $*" >&2; exit 1; }

usage() { die "usage: $0 up|down|stop|uri NAME [DIR_TO_HIDE...]"; }

alive() {  # alive PIDFILE: the daemon of that pid file runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

uri_of() { echo "qemu+tcp://127.0.0.1:$(cat "$1/port")/system"; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {  # write_config DIR PORT UUID: the daemons' own configuration
  local dir=$1 port=$2 uuid=$3
  cp /etc/libvirt/qemu.conf /etc/libvirt/libvirt.conf "$dir/etc/" 2>/dev/null || true
  mkdir -p "$dir/etc/qemu/networks" "$dir/etc/storage" "$dir/etc/nwfilter" "$dir/etc/secrets"
  cp /usr/share/libvirt/nwfilter/*.xml "$dir/etc/nwfilter/" 2>/dev/null || true
  # The machine's QEMU capabilities cache (same binaries): saves libvirtd seconds of probing.
  cp -a /var/cache/libvirt/qemu "$dir/cache/" 2>/dev/null || true
  cat >"$dir/etc/libvirtd.conf" <<EOF
# lab host $(basename "$dir"): tests only -- unauthenticated TCP on 127.0.0.1
host_uuid = "$uuid"
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "$port"
auth_tcp = "none"
unix_sock_group = "root"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >"$dir/etc/virtlogd.conf" <<EOF
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
}

hidden_dirs() {  # the directories novalite keeps its state in, as given or found
  if [ "$#" -gt 0 ]; then printf '%s\n' "$@"; return; fi
  if [ -n "${NOVALITE_STATE_DIR:-}" ]; then echo "$NOVALITE_STATE_DIR"; return; fi
  for d in ./.novalite /var/lib/novalite; do [ -d "$d" ] && echo "$d"; done
  return 0
}

up() {
  local name=$1; shift
  local dir="$BASE/$name"
  if alive "$dir/libvirtd.pid"; then uri_of "$dir"; return; fi
  if [ -s "$dir/port" ] && [ -s "$dir/host_uuid" ] && [ -f "$dir/hidden" ]; then
    # Stopped (`stop`): the same daemon again, its port, host UUID, state and hidden directories.
    [ "$#" -eq 0 ] || die "$name exists (stopped): start it as it was, or take it down first"
  else
    rm -rf "$dir"
    mkdir -p "$dir"
    for pair in $PRIVATE_DIRS; do mkdir -p "$dir/${pair%%:*}"; done
    free_port >"$dir/port"
    cat /proc/sys/kernel/random/uuid >"$dir/host_uuid"
    write_config "$dir" "$(cat "$dir/port")" "$(cat "$dir/host_uuid")"
    local hide
    : >"$dir/hidden"
    while IFS= read -r hide; do
      [ -n "$hide" ] && realpath -m "$hide" >>"$dir/hidden"
    done < <(hidden_dirs "$@")
  fi
  local mounts="" hide
  for pair in $PRIVATE_DIRS; do
    mounts="$mounts mount --bind '$dir/${pair%%:*}' '${pair#*:}' &&"
  done
  while IFS= read -r hide; do
    mkdir -p "$hide"
    mounts="$mounts mount -t tmpfs -o ro,size=4k,mode=0500 lab-hidden '$hide' &&"
  done <"$dir/hidden"
  # Both daemons daemonize inside the namespace, which lives as long as they do; each returns
  # once it is ready (libvirtd -d waits for its child's start-up to succeed).
  unshare -m --propagation private -- /bin/sh -ec "$mounts
    virtlogd -d -f /etc/libvirt/virtlogd.conf -p '$dir/virtlogd.pid'
    libvirtd -d -l -f /etc/libvirt/libvirtd.conf -p '$dir/libvirtd.pid'" \
    >"$dir/start.log" 2>&1 || { cat "$dir/start.log" >&2; down "$name" >/dev/null; die "$name did not start"; }
  local uri
  uri=$(uri_of "$dir")
  for _ in $(seq 100); do  # the TCP listener answers
    virsh -q -c "$uri" version >/dev/null 2>&1 && { echo "$uri"; return; }
    sleep 0.1
  done
  down "$name" >/dev/null
  die "$name does not answer on $uri"
}

stop_daemon() {  # stop_daemon PIDFILE: TERM, then KILL after 10 s
  alive "$1" || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {  # the daemons only: its guests and state stay, `up` starts it again as it was
  local dir="$BASE/$1"
  stop_daemon "$dir/libvirtd.pid"
  stop_daemon "$dir/virtlogd.pid"
}

down() {
  local name=$1
  local dir="$BASE/$name"
  [ -e "$dir" ] || return 0
  if alive "$dir/libvirtd.pid"; then
    # What it runs goes first: guests would keep the namespace (and their bridges) alive.
    local uri dom net
    uri=$(uri_of "$dir")
    for dom in $(virsh -q -c "$uri" list --name 2>/dev/null); do virsh -q -c "$uri" destroy "$dom" >/dev/null || true; done
    for net in $(virsh -q -c "$uri" net-list --name 2>/dev/null); do
      virsh -q -c "$uri" net-destroy "$net" >/dev/null || true
    done
  fi
  stop "$name"
  rm -rf "$dir"
  echo "lab host $name is down"
}

[ "$#" -ge 2 ] || usage
[ "$(id -u)" -eq 0 ] || die "run as root (it starts a system libvirtd)"
case "$2" in ''|*/*|.*) die "bad NAME: $2";; esac
case "$1" in
  up) shift; up "$@" ;;
  down) down "$2" ;;
  stop) stop "$2" ;;
  uri) alive "$BASE/$2/libvirtd.pid" || die "$2 is not running"; uri_of "$BASE/$2" ;;
  *) usage ;;
esac
