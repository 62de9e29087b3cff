#!/bin/sh
# /init of every Capsule guest (busybox sh, PID 1). Stage 1 moves the initramfs onto a tmpfs and
# switch_roots into it: pivot_root(2), which crun uses to enter a container's rootfs, fails with
# EINVAL while the root is the kernel's rootfs. Stage 2 mounts the API filesystems, loads the
# virtio/fuse/overlay modules, mounts the agent disk and the shared dir, configures the network
# and runs the agent; when the agent exits it says why on the console and powers the VM off.
#
# Kernel command line: capsule.hostname=NAME, capsule.accel=tcg|kvm (picks the agent's startup
# snapshot), capsule.probe=1 (print CAPSULE-PROBE-OK <release> once the modules are loaded, then
# power off: the host's KVM probe), capsule.build-snapshot=1 (build the agent's startup snapshot
# into the shared dir instead of running the agent, then power off: guest/assets/build.sh).
# Layout: docs/guest.md.
export PATH=/agent/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "capsule-init: $*"; }

power_off() {
  sync
  # poweroff needs ACPI (microvm has it); reboot -f with QEMU's -no-reboot ends the VM otherwise.
  poweroff -f
  sleep 1
  reboot -f
}

fatal() {
  log "FATAL: $*"
  power_off
}

uptime_s() {
  read -r up _ </proc/uptime
  echo "$up"
}

if [ "$1" != stage2 ]; then
  mount -t tmpfs -o mode=0755 root /newroot || fatal "tmpfs for the root"
  for entry in /*; do
    case $entry in /newroot | /proc | /sys | /dev) ;; *) cp -a "$entry" /newroot/ ;; esac
  done
  mkdir -p /newroot/newroot /newroot/proc /newroot/sys /newroot/dev
  exec switch_root /newroot /init stage2
  fatal "switch_root failed"
fi

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
exec </dev/console >/dev/console 2>&1
log "started, kernel $(uname -r), uptime $(uptime_s)s"

mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
if mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup; then
  # Let containers' cgroups use every controller the kernel offers.
  for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || log "cgroup controller $c not enabled"
  done
else
  log "warning: cgroup2 not mounted"
fi

cmdline=$(cat /proc/cmdline)
hostname=capsule
probe=
accel=tcg
build_snapshot=
for word in $cmdline; do
  case $word in
    capsule.hostname=?*) hostname=${word#capsule.hostname=} ;;
    capsule.accel=kvm | capsule.accel=tcg) accel=${word#capsule.accel=} ;;
    capsule.probe=1) probe=1 ;;
    capsule.build-snapshot=1) build_snapshot=1 ;;
  esac
done

while read -r module; do
  insmod "$module" || fatal "insmod $module failed"
done </etc/capsule-modules
log "modules loaded, uptime $(uptime_s)s"

if [ -n "$probe" ]; then
  echo "CAPSULE-PROBE-OK $(uname -r)"
  power_off
fi

# The agent disk is the virtio-blk device whose serial is capsule-agent (the host sets it), so
# other disks may come and go in any order. devtmpfs creates the node shortly after the probe.
agent_dev=
tries=0
while [ -z "$agent_dev" ] && [ $tries -lt 200 ]; do
  for blk in /sys/block/*; do
    if [ "$(cat "$blk/serial" 2>/dev/null)" = capsule-agent ] && [ -b "/dev/${blk##*/}" ]; then
      agent_dev=/dev/${blk##*/}
    fi
  done
  [ -n "$agent_dev" ] || { tries=$((tries + 1)); sleep 0.02; }
done
[ -n "$agent_dev" ] || fatal "no virtio-blk disk with serial capsule-agent"
mount -t ext4 -o ro,noatime "$agent_dev" /agent || fatal "cannot mount agent disk $agent_dev"
log "agent disk mounted ($agent_dev)"

mkdir -p /run/capsule/shared
mount -t virtiofs -o noatime capsule /run/capsule/shared || fatal "cannot mount virtiofs tag capsule"
log "virtiofs mounted"

# node's flags, written by build.sh: the startup snapshot must be built and run with the same ones.
node_flags=$(cat /agent/node-flags 2>/dev/null) || node_flags="--jitless --no-expose-wasm"

if [ -n "$build_snapshot" ]; then
  # V8 refuses a snapshot made on a CPU with other features than the one it runs on, so it is built
  # here, on the very CPU model the sandboxes get (QEMU's TCG model is not the host's).
  log "building the agent's startup snapshot, uptime $(uptime_s)s"
  # shellcheck disable=SC2086 # node_flags is a list of flags
  if (cd /tmp && env -i PATH="$PATH" HOME=/root /agent/bin/node $node_flags \
    --snapshot-blob /run/capsule/shared/agent.blob --build-snapshot /agent/agent.js </dev/null); then
    echo "CAPSULE-SNAPSHOT-OK uptime $(uptime_s)s"
  else
    echo "CAPSULE-SNAPSHOT-FAILED"
  fi
  power_off
fi

hostname "$hostname"
echo "$hostname" >/etc/hostname
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' "$hostname" >/etc/hosts
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  # QEMU user-mode networking (slirp): fixed addresses, no DHCP round trip.
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
  ip route add default via 10.0.2.2 dev eth0
  echo "nameserver 10.0.2.3" >/etc/resolv.conf
  log "eth0 10.0.2.15/24 via 10.0.2.2"
fi

cd /
# --jitless: under TCG, JIT output would be translated again and again (WebAssembly needs the JIT,
# hence --no-expose-wasm, which also silences node's warning). A clean environment for the agent;
# UV_THREADPOOL_SIZE must be there before node starts (a snapshot cannot set it in time).
# The agent creates $started first thing: its absence after node exited means the snapshot failed.
started=/run/capsule/agent-started
run_agent() {
  # shellcheck disable=SC2086 # node_flags is a list of flags
  env -i PATH="$PATH" HOME=/root UV_THREADPOOL_SIZE=6 CAPSULE_CRUN=/agent/bin/crun \
    CAPSULE_SHARED_DIR=/run/capsule/shared CAPSULE_AGENT_STARTED=$started \
    /agent/bin/node $node_flags "$@" </dev/null
}
# The startup snapshot (build.sh) holds the agent with its modules loaded: no bundle to parse.
# node exits at once when V8 finds it unusable (another CPU, e.g. under KVM): then run agent.js.
blob=/agent/agent.$accel.blob
if [ -f "$blob" ]; then
  log "agent snapshot $blob"
  log "starting agent, uptime $(uptime_s)s"
  run_agent --snapshot-blob "$blob"
  status=$?
  if [ ! -e $started ]; then
    log "the agent snapshot did not start (status $status); starting agent.js, uptime $(uptime_s)s"
    run_agent /agent/agent.js
    status=$?
  fi
else
  log "starting agent, uptime $(uptime_s)s"
  run_agent /agent/agent.js
  status=$?
fi
if [ $status -gt 128 ]; then
  log "agent killed by signal $((status - 128)), powering off"
else
  log "agent exited with status $status, powering off"
fi
power_off
