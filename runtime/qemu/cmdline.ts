/**
 * The QEMU command line of a Capsule VM, built by one pure function so it can be checked against
 * an expected argv without a VM. Machine facts (DESIGN.md): microvm with modern virtio-mmio only
 * (vhost-user-fs refuses legacy devices), guest RAM in a shared memfd (virtiofs needs it), an isa
 * serial console to a file, the agent channel on a virtio-serial port named `agent.0` bound to a
 * unix socket, the read-only agent disk (virtio-blk, serial `capsule-agent`), virtiofs tag
 * `capsule`, a user-mode NIC and a QMP socket; QEMU's own seccomp sandbox is always on.
 *
 * Every host path goes into a QEMU option value, where `,` separates options: commas are escaped
 * by doubling, as QEMU's option syntax wants, and control characters are refused.
 */
import { InvalidParameterError } from '../../common/errdefs';
import type { Accel, PortForward } from '../types';

/** sun_path is 108 bytes including the terminating NUL. */
export const MAX_SOCKET_PATH = 107;

/** The virtio-blk serial of the agent disk; guest/assets/init.sh finds the disk by it. */
export const AGENT_DISK_SERIAL = 'capsule-agent';
/** The virtio-serial port name the guest agent looks up in /sys/class/virtio-ports/. */
export const AGENT_PORT_NAME = 'agent.0';
/** The virtiofs tag the guest mounts at /run/capsule/shared. */
export const VIRTIOFS_TAG = 'capsule';

/** A published port (runtime/types.ts PortForward): one `hostfwd=` of the user-mode NIC. */
export type HostForward = PortForward;

export interface QemuArgsOptions {
  accel: Accel;
  memoryMiB: number;
  vcpus: number;
  kernelPath: string;
  initrdPath: string;
  /** File the serial console (kernel and /init output) is written to. */
  consoleLogPath: string;
  /** Shown in `ps` and QEMU's messages. */
  name?: string;
  /** The guest's hostname (capsule.hostname= on the kernel command line). */
  hostname?: string;
  /** Appended after Capsule's own kernel arguments. */
  kernelArgs?: readonly string[];
  /**
   * TCG only: the host's TSC rate in kHz, passed as tsc_early_khz= so the guest does not
   * calibrate its TSC against the PIT, which under TCG fails now and then and hangs the boot.
   */
  tscKhz?: number;
  /** TCG translation-cache size (MiB); QEMU's default is 1 GiB. */
  tcgTbSizeMiB?: number;
  /** Unix socket of the QMP monitor (server). */
  qmpSocketPath?: string;
  /** Unix socket of the agent's virtio-serial port (server). */
  agentSocketPath?: string;
  /** The agent disk image, attached read-only. */
  agentDiskPath?: string;
  /** virtiofsd's vhost-user socket. */
  virtiofsSocketPath?: string;
  /** A user-mode (slirp) NIC, with host port forwards. */
  network?: { hostForwards?: readonly HostForward[] };
  /**
   * A virtio-rng device fed from the host's /dev/urandom. Without one the guest kernel's random
   * pool is ready only seconds into the boot under TCG (jitter entropy), and whatever calls
   * getrandom(2) first waits for it: node does at start-up (OpenSSL's seeding).
   */
  entropy?: boolean;
  /** QEMU's seccomp filter; on unless a test turns it off. */
  sandbox?: boolean;
}

/** Capsule's fixed kernel arguments (before capsule.accel, hostname, tsc_early_khz and the caller's). */
export const BASE_KERNEL_ARGS: readonly string[] = [
  'console=ttyS0',
  // A panic reboots at once (triple fault), and -no-reboot turns any reboot into QEMU exiting:
  // a broken guest never hangs around.
  'panic=-1',
  'reboot=t',
  // DESIGN.md: under TCG these make the TSC calibration hang rare (tsc_early_khz removes it).
  'tsc=reliable',
  'no_timer_check',
  'lpj=5000000',
  'quiet',
];

/** Escapes a value for QEMU's `key=value,...` option syntax. */
export function qemuOptValue(value: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) {
    throw new InvalidParameterError(`QEMU option value has a control character: ${JSON.stringify(value)}`);
  }
  return value.replaceAll(',', ',,');
}

export function assertSocketPath(p: string): void {
  if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
    throw new InvalidParameterError(`unix socket path longer than ${MAX_SOCKET_PATH} bytes: ${p}`);
  }
}

// What sethostname(2) takes (64 bytes) and a kernel command line word can carry; Docker itself
// does not restrict --hostname further.
const HOSTNAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function assertPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidParameterError(`invalid ${what} port ${port}`);
  }
}

/** One `hostfwd=` value of -netdev user. */
export function hostForwardOption(fwd: HostForward): string {
  if (fwd.proto !== 'tcp' && fwd.proto !== 'udp') {
    throw new InvalidParameterError(`invalid port-forward protocol ${String(fwd.proto)}`);
  }
  const addr = fwd.hostAddr === '0.0.0.0' ? '' : fwd.hostAddr;
  if (addr !== '' && !IPV4_RE.test(addr)) {
    // QEMU 7.2's slirp hostfwd listens on IPv4 only.
    throw new InvalidParameterError(`port forwards need an IPv4 host address, not ${fwd.hostAddr}`);
  }
  assertPort(fwd.hostPort, 'host');
  assertPort(fwd.guestPort, 'guest');
  return `hostfwd=${fwd.proto}:${addr}:${fwd.hostPort}-:${fwd.guestPort}`;
}

/** The kernel command line (the -append value). */
export function buildKernelCmdline(opts: QemuArgsOptions): string {
  // The accelerator, for /init: the agent's startup snapshot is specific to the CPU the guest sees.
  const args = [...BASE_KERNEL_ARGS, `capsule.accel=${opts.accel}`];
  if (opts.hostname !== undefined) {
    if (!HOSTNAME_RE.test(opts.hostname))
      throw new InvalidParameterError(`invalid hostname ${opts.hostname}`);
    args.push(`capsule.hostname=${opts.hostname}`);
  }
  if (opts.accel === 'tcg' && opts.tscKhz !== undefined) {
    if (!Number.isInteger(opts.tscKhz) || opts.tscKhz <= 0) {
      throw new InvalidParameterError(`invalid TSC rate ${opts.tscKhz} kHz`);
    }
    args.push(`tsc_early_khz=${opts.tscKhz}`);
  }
  for (const arg of opts.kernelArgs ?? []) {
    // eslint-disable-next-line no-control-regex
    if (arg === '' || /[\s"\u0000-\u001f]/.test(arg)) {
      throw new InvalidParameterError(`invalid kernel argument ${JSON.stringify(arg)}`);
    }
    args.push(arg);
  }
  return args.join(' ');
}

/** The argv (without the qemu-system-x86_64 binary itself). Throws InvalidParameterError. */
export function buildQemuArgs(opts: QemuArgsOptions): string[] {
  if (!Number.isInteger(opts.memoryMiB) || opts.memoryMiB < 64) {
    throw new InvalidParameterError(`guest memory must be at least 64 MiB, not ${opts.memoryMiB}`);
  }
  if (!Number.isInteger(opts.vcpus) || opts.vcpus < 1 || opts.vcpus > 64) {
    throw new InvalidParameterError(`invalid vCPU count ${opts.vcpus}`);
  }
  const v = qemuOptValue;
  const argv: string[] = [];
  if (opts.name !== undefined) argv.push('-name', v(opts.name));
  argv.push(
    '-M',
    'microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem',
    '-global',
    'virtio-mmio.force-legacy=false',
  );
  if (opts.accel === 'kvm') {
    argv.push('-accel', 'kvm', '-cpu', 'host');
  } else {
    const tb = opts.tcgTbSizeMiB;
    if (tb !== undefined && (!Number.isInteger(tb) || tb < 1)) {
      throw new InvalidParameterError(`invalid TCG translation-cache size ${tb} MiB`);
    }
    argv.push('-accel', tb === undefined ? 'tcg,thread=multi' : `tcg,thread=multi,tb-size=${tb}`);
  }
  argv.push(
    '-m',
    `${opts.memoryMiB}M`,
    '-object',
    `memory-backend-memfd,id=mem,size=${opts.memoryMiB}M,share=on`,
    '-smp',
    String(opts.vcpus),
    '-nodefaults',
    '-no-user-config',
    '-nographic',
    '-no-reboot',
    '-kernel',
    opts.kernelPath,
    '-initrd',
    opts.initrdPath,
    '-append',
    buildKernelCmdline(opts),
    '-chardev',
    `file,id=console,path=${v(opts.consoleLogPath)}`,
    '-serial',
    'chardev:console',
  );
  if (opts.entropy === true) {
    argv.push('-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-device,rng=rng0');
  }
  if (opts.agentSocketPath !== undefined) {
    assertSocketPath(opts.agentSocketPath);
    argv.push(
      '-chardev',
      `socket,id=agent,path=${v(opts.agentSocketPath)},server=on,wait=off`,
      '-device',
      'virtio-serial-device,id=vserial0',
      '-device',
      `virtserialport,id=agent0,chardev=agent,name=${AGENT_PORT_NAME}`,
    );
  }
  if (opts.agentDiskPath !== undefined) {
    argv.push(
      '-drive',
      `file=${v(opts.agentDiskPath)},if=none,id=agentdisk,format=raw,readonly=on`,
      '-device',
      `virtio-blk-device,drive=agentdisk,serial=${AGENT_DISK_SERIAL}`,
    );
  }
  if (opts.virtiofsSocketPath !== undefined) {
    assertSocketPath(opts.virtiofsSocketPath);
    argv.push(
      '-chardev',
      `socket,id=virtiofs,path=${v(opts.virtiofsSocketPath)}`,
      '-device',
      `vhost-user-fs-device,chardev=virtiofs,tag=${VIRTIOFS_TAG}`,
    );
  }
  if (opts.network !== undefined) {
    // Fixed slirp addresses: guest/assets/init.sh configures 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3.
    const netdev = ['user', 'id=net0', 'net=10.0.2.0/24', 'host=10.0.2.2', 'dns=10.0.2.3', 'ipv6=off'];
    for (const fwd of opts.network.hostForwards ?? []) netdev.push(hostForwardOption(fwd));
    argv.push('-netdev', netdev.join(','), '-device', 'virtio-net-device,netdev=net0');
  }
  if (opts.qmpSocketPath !== undefined) {
    assertSocketPath(opts.qmpSocketPath);
    argv.push(
      '-chardev',
      `socket,id=qmp,path=${v(opts.qmpSocketPath)},server=on,wait=off`,
      '-mon',
      'chardev=qmp,mode=control',
    );
  }
  if (opts.sandbox !== false) {
    argv.push('-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
  }
  return argv;
}
