#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (root, Node 20, npm registry + Debian packages
# only): installs the missing system packages, runs npm ci, builds the TypeScript and the agent
# bundle, and builds the guest assets (kernel, initramfs, agent disk) into the cache when missing
# or stale. Called by both README commands; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A NEED=(
  [qemu-system-x86_64]=qemu-system-x86
  [/usr/lib/qemu/virtiofsd]=qemu-system-common
  [busybox]=busybox-static
  [crun]=crun
  [/usr/bin/tini-static]=tini
  [mkfs.ext4]=e2fsprogs
  [cpio]=cpio
  [modprobe]=kmod
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [vde_switch]=vde2
  [setfattr]=attr
  [openssl]=openssl
  [gcc]=gcc
  [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev
  [tmux]=tmux
)
missing=()
for cmd in "${!NEED[@]}"; do
  # A path is a file that must exist (libc.a is not executable); a name a command on PATH.
  if [[ $cmd == /* ]]; then [[ -e $cmd ]] || missing+=("${NEED[$cmd]}"); else command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}"); fi
done
# busybox must be the static build: it goes into the initramfs.
if command -v busybox >/dev/null && ! file -L "$(command -v busybox)" 2>/dev/null | grep -q 'statically linked'; then
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build

if [[ -x guest/assets/build.sh ]]; then
  guest/assets/build.sh
fi
