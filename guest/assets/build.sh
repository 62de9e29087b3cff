#!/usr/bin/env bash
# Builds the guest assets every Capsule VM boots from, into ${CAPSULE_GUEST_DIR:-/var/cache/capsule/guest}:
#
#   vmlinuz        Debian's linux-image-*-cloud-amd64 kernel (apt-get download + dpkg -x, never installed)
#   initrd.img     gzip'd newc cpio: static busybox + applet links, the virtio/fuse/overlay modules, /init
#   agent.img      read-only ext4 (mkfs.ext4 -d, no loop mount): node, crun, tini (static), their shared libraries,
#                  agent.js, agent.proto, node's flags and the agent's V8 startup snapshot
#                  (agent.tcg.blob, built in a TCG VM by runtime/agent-snapshot.ts); mounted at /agent
#   manifest.json  { kernelRelease, kernel, initrd, agentDisk, inputsHash } read by runtime/guest-assets.ts
#
# Idempotent: each asset is rebuilt only when its inputs changed (the agent disk alone when agent.js
# changes, the kernel only when the package version does). Files are replaced by rename, so a VM that
# is running keeps the inode it opened. Layout and rationale: docs/guest.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ASSETS=$ROOT/guest/assets
OUT=${CAPSULE_GUEST_DIR:-/var/cache/capsule/guest}
KERNEL_META=${CAPSULE_KERNEL_PACKAGE:-linux-image-cloud-amd64}
# Load order from DESIGN.md; dependencies are resolved from modules.dep, built-ins are skipped.
# virtio_rng right after the transport: the guest's random pool is ready before anything asks.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_mmio virtio_rng virtio_console
  virtio_blk fuse virtiofs overlay failover net_failover virtio_net)
# node's flags in the guest (init.sh reads them from the agent disk); the agent's startup snapshot
# is built with the same ones, as V8 requires. --jitless: docs/guest.md has the measurements.
NODE_FLAGS=${CAPSULE_GUEST_NODE_FLAGS:-"--jitless --no-expose-wasm"}
# CAPSULE_GUEST_NODE_FLAGS overrides them (experiments); CAPSULE_AGENT_SNAPSHOT=0 skips the
# snapshot (the agent then starts from agent.js, ~2 s slower).
AGENT_SNAPSHOT=${CAPSULE_AGENT_SNAPSHOT:-1}

say() { echo "guest-assets: $*"; }
die() {
  echo "guest-assets: error: $*" >&2
  exit 1
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
sha_str() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
# Atomic replace: the final name only ever holds a complete file.
install_atomic() { # src dst
  cp -f "$1" "$2.tmp.$$"
  mv -f "$2.tmp.$$" "$2"
}

for tool in apt-get apt-cache dpkg depmod cpio gzip mkfs.ext4 ldd flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "missing $tool (run scripts/setup.sh)"
done

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9 # one build at a time per cache dir

# ---------------------------------------------------------------------------------------------------
# Inputs
BUSYBOX=$(command -v busybox || true)
[[ -n $BUSYBOX ]] || die "busybox not found (Debian package busybox-static)"
BUSYBOX=$(readlink -f "$BUSYBOX")
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked: install busybox-static"; fi
NODE_BIN=$(readlink -f "${CAPSULE_GUEST_NODE:-$(command -v node)}")
CRUN_BIN=$(readlink -f "${CAPSULE_GUEST_CRUN:-$(command -v crun || true)}")
[[ -x $NODE_BIN ]] || die "node not found"
[[ -x $CRUN_BIN ]] || die "crun not found (Debian package crun)"
# docker run --init: the OCI spec bind-mounts it read-only at /sbin/docker-init (runtime/oci-spec.ts).
TINI_BIN=$(readlink -f "${CAPSULE_GUEST_TINI:-/usr/bin/tini-static}")
[[ -x $TINI_BIN ]] || die "tini-static not found (Debian package tini)"
AGENT_JS=${CAPSULE_AGENT_JS:-$ROOT/build/guest/agent.js}
AGENT_PROTO=$ROOT/build/guest/agent.proto
[[ -f $AGENT_PROTO ]] || AGENT_PROTO=$ROOT/guest/protocol/agent.proto
BUILD_SH_SHA=$(sha "$ASSETS/build.sh")

# ---------------------------------------------------------------------------------------------------
# Kernel: the package the cloud meta-package depends on, at its candidate version.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'; }

# At most one apt-get update per build: for lists that are missing, or stale (a security update
# replaced the version they name, so the mirror no longer has it).
apt_updated=
apt_update() {
  [[ -z $apt_updated ]] || return 1
  apt_updated=1
  say "apt-get update"
  apt-get update -qq
}

# Sets kpkg and kver; fails when apt does not know them.
resolve_kernel() {
  local meta_ver
  kpkg='' kver=''
  meta_ver=$(candidate "$KERNEL_META")
  [[ -n $meta_ver && $meta_ver != "(none)" ]] || return 1
  kpkg=$(apt-cache show "$KERNEL_META=$meta_ver" | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n' |
    sed -E 's/^ *([^ ]+).*/\1/' | grep -E '^linux-image-[0-9]' | head -n1 || true)
  [[ -n $kpkg ]] || return 1
  kver=$(candidate "$kpkg")
  [[ -n $kver && $kver != "(none)" ]]
}

# The unpacked package's /lib/modules/RELEASE (or /usr/lib/modules/RELEASE once usr-merged).
modules_dir() {
  local d
  for d in "$1"/tree/lib/modules/* "$1"/tree/usr/lib/modules/*; do
    if [[ -d $d ]]; then
      echo "$d"
      return
    fi
  done
}

# Downloads and unpacks $kpkg=$kver into $1 (marked complete only at the end).
fetch_kernel() {
  local dir=$1 mods
  [[ -f $dir/.complete ]] && return 0
  say "fetching $kpkg $kver"
  rm -rf "$dir"
  mkdir -p "$dir"
  # Sandbox user root: _apt cannot write into a root-owned cache dir.
  if ! (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "$kpkg=$kver" >/dev/null); then
    rm -rf "$dir"
    return 1
  fi
  dpkg -x "$dir"/*.deb "$dir/tree"
  mods=$(modules_dir "$dir")
  [[ -n $mods ]] || die "$kpkg has no modules tree"
  # The package ships no modules.dep (depmod runs at install time); make one for our tree.
  depmod -b "${mods%/lib/modules/*}" "$(basename "$mods")"
  touch "$dir/.complete"
}

KROOT=$OUT/kernel
KDIR=
if resolve_kernel || { apt_update && resolve_kernel; }; then
  if fetch_kernel "$KROOT/${kpkg}_${kver}" ||
    { apt_update && resolve_kernel && fetch_kernel "$KROOT/${kpkg}_${kver}"; }; then
    KDIR=$KROOT/${kpkg}_${kver}
  fi
fi
if [[ -z $KDIR ]]; then
  # Offline with a kernel cached: keep using it rather than failing the whole set-up.
  KDIR=$(find "$KROOT" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $KDIR ]] || die "cannot download $KERNEL_META's kernel package (apt-get download ${kpkg:-?}=${kver:-?})"
  say "warning: kernel download failed, using cached $(basename "$KDIR")"
fi
MODDIR=$(modules_dir "$KDIR")
RELEASE=$(basename "$MODDIR")
VMLINUZ=$KDIR/tree/boot/vmlinuz-$RELEASE
[[ -f $VMLINUZ ]] || die "no $VMLINUZ"
KERNEL_ID=$(basename "$KDIR")
# Drop other cached kernels (each unpacked tree is ~100 MiB).
for old in "$KROOT"/*; do [[ $old == "$KDIR" ]] || rm -rf "$old"; done

if ! cmp -s "$VMLINUZ" "$OUT/vmlinuz" 2>/dev/null; then
  say "kernel $RELEASE"
  install_atomic "$VMLINUZ" "$OUT/vmlinuz"
fi

# ---------------------------------------------------------------------------------------------------
# initramfs
initrd_hash=$(sha_str "$KERNEL_ID $(sha "$ASSETS/init.sh") $BUILD_SH_SHA $(sha "$BUSYBOX")")

# Prints the modules to load, dependencies first, each once, as paths relative to $MODDIR.
resolve_modules() {
  local -A seen=()
  local order=()
  visit() {
    local rel=$1 dep
    [[ -n ${seen[$rel]:-} ]] && return 0
    seen[$rel]=1
    # modules.dep lists a module's whole dependency closure, deepest last: visit it reversed.
    local deps
    deps=$(awk -v m="$rel:" '$1 == m { for (i = NF; i > 1; i--) print $i }' "$MODDIR/modules.dep")
    for dep in $deps; do visit "$dep"; done
    order+=("$rel")
  }
  local name rel
  for name in "${MODULES[@]}"; do
    if grep -Eq "/${name//_/[_-]}\.ko(\.[a-z]+)?$" "$MODDIR/modules.builtin"; then continue; fi
    rel=$(awk -F: '{print $1}' "$MODDIR/modules.dep" | grep -E "/${name//_/[_-]}\.ko(\.[a-z]+)?$" | head -n1 || true)
    [[ -n $rel ]] || die "kernel $RELEASE has no module $name"
    visit "$rel"
  done
  printf '%s\n' "${order[@]}"
}

if [[ ! -f $OUT/initrd.img || "$(cat "$OUT/.initrd.hash" 2>/dev/null)" != "$initrd_hash" ]]; then
  say "initramfs ($RELEASE)"
  stage=$(mktemp -d "$OUT/.initrd.XXXXXX")
  trap 'rm -rf "$stage" "$OUT/initrd.img.tmp.$$"' EXIT
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc,agent,newroot,lib/modules,lib64,root}
  chmod 1777 "$stage/tmp"
  chmod 0700 "$stage/root"
  cp "$BUSYBOX" "$stage/bin/busybox"
  while read -r applet; do
    [[ $applet == bin/busybox ]] && continue
    ln -sf /bin/busybox "$stage/$applet"
  done < <("$BUSYBOX" --list-full)
  # The kernel's built-in initramfs already has /dev/console; ours too, in case it ever does not.
  mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
  install -m 0755 "$ASSETS/init.sh" "$stage/init"
  # Dynamic loader and libraries of node and crun live on the agent disk (one glibc for both):
  # the ELF interpreter path and glibc's default search dir point there.
  ln -s /agent/lib/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2"
  ln -s /agent/lib "$stage/lib/x86_64-linux-gnu"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$stage/etc/passwd"
  printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$stage/etc/group"
  : >"$stage/etc/capsule-modules"
  module_list=$(resolve_modules) # not in <(…): a failure there would go unnoticed
  while read -r rel; do
    mkdir -p "$stage/lib/modules/$RELEASE/$(dirname "$rel")"
    case $rel in
      *.ko.xz) xz -dc "$MODDIR/$rel" >"$stage/lib/modules/$RELEASE/${rel%.xz}" && rel=${rel%.xz} ;;
      *.ko.zst) zstd -qdc "$MODDIR/$rel" >"$stage/lib/modules/$RELEASE/${rel%.zst}" && rel=${rel%.zst} ;;
      *.ko.gz) gzip -dc "$MODDIR/$rel" >"$stage/lib/modules/$RELEASE/${rel%.gz}" && rel=${rel%.gz} ;;
      *) cp "$MODDIR/$rel" "$stage/lib/modules/$RELEASE/$rel" ;;
    esac
    echo "/lib/modules/$RELEASE/$rel" >>"$stage/etc/capsule-modules"
  done <<<"$module_list"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) |
    gzip -9n >"$OUT/initrd.img.tmp.$$"
  mv -f "$OUT/initrd.img.tmp.$$" "$OUT/initrd.img"
  echo "$initrd_hash" >"$OUT/.initrd.hash"
  rm -rf "$stage"
  trap - EXIT
fi

# ---------------------------------------------------------------------------------------------------
# Agent disk
# The shared libraries of the given ELF files (ldd), the dynamic loader included.
libs_of() {
  local f
  for f in "$@"; do ldd "$f"; done |
    awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | LC_ALL=C sort -u
}
# The guest has no systemd, and crun calls libsystemd only for what Capsule never asks of it (the
# systemd cgroup manager over D-Bus, sd_notify with NOTIFY_SOCKET, --log=journald). Loading it and the
# five libraries it pulls in (libgcrypt, libgpg-error, liblzma, libzstd, liblz4) took ~50 ms of every
# crun start under TCG (measured in a guest: `crun --version` 150–210 ms with them, 90–130 ms
# without), and every docker exec starts crun. So the agent disk gets a stand-in libsystemd.so.0
# generated from the symbols this crun imports: each one fails with -ENOSYS. The host's crun is
# checked to load with it before it is used.
SD_STUB_DIR=$OUT/libsystemd-stub
build_libsystemd_stub() {
  command -v nm >/dev/null 2>&1 || die "missing nm (binutils; run scripts/setup.sh)"
  local imports
  imports=$(nm -D --undefined-only "$CRUN_BIN" | awk '$2 ~ /@LIBSYSTEMD_/ {print $2}' | LC_ALL=C sort -u)
  [[ -n $imports ]] || return 0
  local want
  want=$(sha_str "$BUILD_SH_SHA $imports")
  [[ -f $SD_STUB_DIR/libsystemd.so.0 && "$(cat "$SD_STUB_DIR/.hash" 2>/dev/null)" == "$want" ]] && return 0
  command -v gcc >/dev/null 2>&1 || die "missing gcc (run scripts/setup.sh)"
  say "libsystemd stand-in for crun"
  local tmp
  tmp=$(mktemp -d "$OUT/.sdstub.XXXXXX")
  {
    echo '/* Generated by guest/assets/build.sh: see the comment there. */'
    awk -F@ '{print "long " $1 "(void) { return -38; /* -ENOSYS */ }"}' <<<"$imports"
  } >"$tmp/stub.c"
  # One version node per LIBSYSTEMD_<n>, oldest first, each inheriting the previous (as upstream).
  local prev='' version
  : >"$tmp/stub.map"
  while read -r version; do
    {
      printf '%s {\n  global:\n' "$version"
      awk -F@ -v v="$version" '$2 == v {print "    " $1 ";"}' <<<"$imports"
      [[ -z $prev ]] && printf '  local: *;\n'
      printf '} %s;\n' "$prev"
    } >>"$tmp/stub.map"
    prev=$version
  done < <(awk -F@ '{print $2}' <<<"$imports" | sort -t_ -k2 -n -u)
  gcc -O2 -Wall -shared -fPIC -nostdlib -Wl,--version-script="$tmp/stub.map" -Wl,-soname,libsystemd.so.0 \
    -o "$tmp/libsystemd.so.0" "$tmp/stub.c"
  LD_LIBRARY_PATH=$tmp "$CRUN_BIN" --version >/dev/null || die "crun does not load with the libsystemd stand-in"
  rm -rf "$SD_STUB_DIR"
  mkdir -p "$SD_STUB_DIR"
  mv "$tmp/libsystemd.so.0" "$tmp/stub.c" "$tmp/stub.map" "$SD_STUB_DIR/"
  echo "$want" >"$SD_STUB_DIR/.hash"
  rm -rf "$tmp"
}
build_libsystemd_stub
if [[ -f $SD_STUB_DIR/libsystemd.so.0 ]]; then
  # crun's libraries as the stand-in resolves them: its own dependencies drop out.
  mapfile -t LIBS < <({
    libs_of "$NODE_BIN"
    LD_LIBRARY_PATH=$SD_STUB_DIR libs_of "$CRUN_BIN"
  } | LC_ALL=C sort -u)
else
  mapfile -t LIBS < <(libs_of "$NODE_BIN" "$CRUN_BIN")
fi
# The agent's static C helpers (no library to ship for them), rebuilt when their source changes:
# build_static_helper NAME SOURCE → $OUT/NAME.
build_static_helper() {
  local name=$1 src=$2 bin=$OUT/$1
  if [[ ! -x $bin || "$(cat "$OUT/.$name.hash" 2>/dev/null)" != "$(sha "$src")" ]]; then
    command -v gcc >/dev/null 2>&1 || die "missing gcc (run scripts/setup.sh)"
    say "$name"
    gcc -O2 -Wall -Wextra -Werror -static -o "$bin.tmp.$$" "$src"
    mv -f "$bin.tmp.$$" "$bin"
    sha "$src" >"$OUT/.$name.hash"
  fi
}
# capsule-console (guest/console/): carries a container's terminal (crun --console-socket) over pipes
# for the agent, which cannot receive a file descriptor itself.
build_static_helper capsule-console "$ROOT/guest/console/capsule-console.c"
CONSOLE_BIN=$OUT/capsule-console
# capsule-setclock (guest/clock/): steps the guest's clock after the VM was paused (Node cannot call
# clock_settime).
build_static_helper capsule-setclock "$ROOT/guest/clock/capsule-setclock.c"
SETCLOCK_BIN=$OUT/capsule-setclock
# capsule-exec (guest/exec/): starts an exec without a terminal in one fork, instead of crun exec.
build_static_helper capsule-exec "$ROOT/guest/exec/capsule-exec.c"
EXEC_BIN=$OUT/capsule-exec
agent_inputs="$BUILD_SH_SHA $(sha "$NODE_BIN") $(sha "$CRUN_BIN") $(sha "$AGENT_PROTO") flags:$NODE_FLAGS"
agent_inputs+=" console:$(sha "$CONSOLE_BIN") setclock:$(sha "$SETCLOCK_BIN") exec:$(sha "$EXEC_BIN") tini:$(sha "$TINI_BIN")"
if [[ -f $AGENT_JS ]]; then agent_inputs+=" $(sha "$AGENT_JS")"; else agent_inputs+=" stub"; fi
# The snapshot also depends on the VM that builds it: its builder, the initramfs and QEMU's CPU model.
snapshot_builder=$ROOT/dist/runtime/agent-snapshot.js
can_snapshot=
if [[ $AGENT_SNAPSHOT != 0 && -f $AGENT_JS ]]; then
  if [[ ! -f $snapshot_builder ]]; then
    say "warning: no dist/ (npm run build): the agent disk gets no startup snapshot"
  elif ! command -v qemu-system-x86_64 >/dev/null || [[ ! -x /usr/lib/qemu/virtiofsd ]]; then
    say "warning: no qemu-system-x86_64 or virtiofsd: the agent disk gets no startup snapshot"
  else
    can_snapshot=1
    agent_inputs+=" snapshot $(sha "$snapshot_builder") $(sha "$ROOT/dist/runtime/qemu/cmdline.js") $initrd_hash"
    agent_inputs+=" $(qemu-system-x86_64 --version | head -n1)"
  fi
fi
for lib in "${LIBS[@]}"; do agent_inputs+=" $(basename "$lib"):$(sha "$lib")"; done
agent_hash=$(sha_str "$agent_inputs")

if [[ ! -f $OUT/agent.img || "$(cat "$OUT/.agent.hash" 2>/dev/null)" != "$agent_hash" ]]; then
  stage=$(mktemp -d "$OUT/.agent.XXXXXX")
  trap 'rm -rf "$stage" "$OUT/agent.img.tmp.$$"' EXIT
  mkdir -p "$stage/bin" "$stage/lib"
  cp "$NODE_BIN" "$stage/bin/node"
  cp "$CRUN_BIN" "$stage/bin/crun"
  cp "$TINI_BIN" "$stage/bin/tini"
  cp "$CONSOLE_BIN" "$stage/bin/capsule-console"
  cp "$SETCLOCK_BIN" "$stage/bin/capsule-setclock"
  cp "$EXEC_BIN" "$stage/bin/capsule-exec"
  for lib in "${LIBS[@]}"; do cp -L "$lib" "$stage/lib/$(basename "$lib")"; done
  cp "$AGENT_PROTO" "$stage/agent.proto"
  if [[ -f $AGENT_JS ]]; then
    say "agent disk (agent.js $(sha "$AGENT_JS" | cut -c1-12))"
    cp "$AGENT_JS" "$stage/agent.js"
  else
    say "agent disk (no build/guest/agent.js yet: stub agent)"
    cat >"$stage/agent.js" <<'EOF'
// Stub written by guest/assets/build.sh while build/guest/agent.js does not exist: proves the boot.
console.log('agent stub');
setInterval(() => undefined, 1 << 30);
EOF
  fi
  echo "$NODE_FLAGS" >"$stage/node-flags"
  echo "$agent_hash" >"$stage/.inputs-hash"
  make_agent_img() {
    chmod -R a+rX,go-w "$stage"
    local kib
    kib=$(du -sk --apparent-size "$stage" | cut -f1)
    kib=$((kib + kib / 5 + 16384))
    rm -f "$OUT/agent.img.tmp.$$"
    mkfs.ext4 -q -F -L capsule-agent -O ^has_journal -m 0 -E root_owner=0:0 -d "$stage" \
      "$OUT/agent.img.tmp.$$" "${kib}k" >/dev/null
  }
  make_agent_img
  if [[ -n $can_snapshot ]]; then
    # Boot the disk just made in a TCG VM that builds the snapshot (agent-snapshot.ts), then make the
    # disk again with it. A failure leaves the disk without one: slower agent start, nothing broken.
    say "agent startup snapshot (TCG VM)"
    if node "$snapshot_builder" "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/agent.img.tmp.$$" "$RELEASE" \
      "$stage/agent.tcg.blob"; then
      make_agent_img
    else
      say "warning: the agent startup snapshot failed to build; the agent will start from agent.js"
    fi
  fi
  mv -f "$OUT/agent.img.tmp.$$" "$OUT/agent.img"
  echo "$agent_hash" >"$OUT/.agent.hash"
  rm -rf "$stage"
  trap - EXIT
fi

# ---------------------------------------------------------------------------------------------------
# Manifest (written last: it only ever names complete files).
inputs_hash=$(sha_str "$KERNEL_ID $initrd_hash $agent_hash")
manifest=$(
  cat <<EOF
{
  "kernelRelease": "$RELEASE",
  "kernel": "$OUT/vmlinuz",
  "initrd": "$OUT/initrd.img",
  "agentDisk": "$OUT/agent.img",
  "kernelPackage": "$KERNEL_ID",
  "inputsHash": "$inputs_hash"
}
EOF
)
if [[ "$(cat "$OUT/manifest.json" 2>/dev/null)" != "$manifest" ]]; then
  printf '%s\n' "$manifest" >"$OUT/manifest.json.tmp.$$"
  mv -f "$OUT/manifest.json.tmp.$$" "$OUT/manifest.json"
  say "ready in $OUT ($RELEASE, inputs ${inputs_hash:0:12})"
else
  say "up to date ($RELEASE, inputs ${inputs_hash:0:12})"
fi
