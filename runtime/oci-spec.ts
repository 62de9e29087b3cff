/**
 * The OCI runtime spec (config.json) for a container, as dockerd 20.10 builds it by default
 * (compared field by field with the config.json the reference dockerd on this machine handed to
 * runc for `docker run busybox`), with the differences a VM per container calls for:
 *
 * - no network namespace: the container uses the VM's network, which is its own;
 * - no net.ipv4.* sysctls in the spec (they need a network namespace): the agent sets Docker's
 *   values (unprivileged ports from 0, ping for every group) in the guest itself;
 * - no seccomp profile yet (the VM is the isolation boundary; Docker's default profile is a
 *   follow-up for defence in depth);
 * - process.user is a placeholder: the agent resolves Docker's User string against the rootfs's
 *   /etc/passwd and /etc/group in the guest, and sets HOME the way runc does;
 * - terminal follows Docker's Tty; the agent runs such a process on a pty (capsule-console).
 *
 * rlimits are not set, as with dockerd (the process inherits the agent's); noNewPrivileges false.
 *
 * The container options (ContainerOptions) follow dockerd 20.10's config.json for the same flags
 * (compared with the reference dockerd): --shm-size, --tmpfs (options merged as moby's
 * MergeTmpfsOptions), --read-only, --cap-add/--cap-drop (moby's TweakCapabilities), --ulimit,
 * --init (tini bind-mounted read-only at /sbin/docker-init, prepended with `--`). --privileged
 * gives every capability, no masked or read-only paths, /sys and the cgroup fs read-write, and
 * every device: dockerd lists the host's devices; here /dev is the guest kernel's devtmpfs, which
 * holds every device of the VM.
 */
import { InvalidParameterError, SystemError } from '../common/errdefs';
import type { ContainerOptions, ProcessSpec, Ulimit } from './types';

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options?: string[];
}

export interface OciDeviceRule {
  allow: boolean;
  type?: 'a' | 'b' | 'c';
  major?: number;
  minor?: number;
  access: string;
}

export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: { bounding: string[]; effective: string[]; permitted: string[] };
    rlimits?: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
    oomScoreAdj: number;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    resources: {
      devices: OciDeviceRule[];
      /** Bytes; `swap` is memory+swap as OCI counts it (= limit: the VM has no swap). */
      memory?: { limit: number; swap: number };
    };
    cgroupsPath: string;
    namespaces: { type: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
  };
}

export interface OciSpecInput {
  containerId: string;
  hostname: string;
  process: ProcessSpec;
  /** Docker's HostConfig options; absent = dockerd's defaults. */
  options?: ContainerOptions;
  /** Bind mounts and the like, after the defaults (volumes, /etc/hosts …). */
  extraMounts?: OciMount[];
}

/** Where the agent disk (mounted at /agent in the guest) has tini (guest/assets/build.sh). */
export const GUEST_INIT_PATH = '/agent/bin/tini';
/** Where dockerd puts its init in the container. */
export const DOCKER_INIT_PATH = '/sbin/docker-init';
const DEFAULT_SHM_SIZE = 64 * 1024 * 1024;

/** Docker's default capability set (moby's caps.DefaultCapabilities), in its order. */
export const DOCKER_DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

/**
 * Every capability of the guest kernel (Debian 6.1: up to CAP_CHECKPOINT_RESTORE), in number
 * order: what --privileged and --cap-add ALL give (moby's GetAllCapabilities).
 */
export const ALL_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

/** moby's NormalizeLegacyCapabilities: upper case, CAP_ prefixed, known; "ALL" kept as is. */
export function normalizeCapabilities(caps: readonly string[]): string[] {
  return caps.map((raw) => {
    let c = raw.toUpperCase();
    if (c === 'ALL') return c;
    if (!c.startsWith('CAP_')) c = `CAP_${c}`;
    if (!ALL_CAPABILITIES.includes(c)) throw new InvalidParameterError(`unknown capability: "${c}"`);
    return c;
  });
}

/** moby's TweakCapabilities: the container's capability set from the defaults and the flags. */
export function containerCapabilities(options: ContainerOptions = {}): string[] {
  if (options.privileged) return [...ALL_CAPABILITIES];
  const adds = options.capAdd ?? [];
  const drops = options.capDrop ?? [];
  if (adds.length === 0 && drops.length === 0) return [...DOCKER_DEFAULT_CAPABILITIES];
  const capDrop = normalizeCapabilities(drops);
  const capAdd = normalizeCapabilities(adds);
  if (capAdd.includes('ALL')) return ALL_CAPABILITIES.filter((c) => !capDrop.includes(c));
  if (capDrop.includes('ALL')) return capAdd;
  return [...DOCKER_DEFAULT_CAPABILITIES.filter((c) => !capDrop.includes(c)), ...capAdd];
}

/** Mount flags by the bit they set or clear (moby's pkg/mount flags): the last of a group wins. */
const TMPFS_FLAG_GROUPS: readonly (readonly string[])[] = [
  ['ro', 'rw'],
  ['exec', 'noexec'],
  ['suid', 'nosuid'],
  ['dev', 'nodev'],
  ['sync', 'async'],
  ['atime', 'noatime'],
  ['diratime', 'nodiratime'],
  ['relatime', 'norelatime'],
  ['strictatime', 'nostrictatime'],
  ['mand', 'nomand'],
  ['dirsync'],
  ['remount'],
  ['bind', 'rbind'],
  ['private', 'rprivate', 'shared', 'rshared', 'slave', 'rslave', 'unbindable', 'runbindable'],
];
const TMPFS_DATA_KEYS = new Set(['size', 'mode', 'uid', 'gid', 'nr_inodes', 'nr_blocks', 'mpol']);

/**
 * moby's MergeTmpfsOptions over dockerd's defaults (noexec, nosuid, nodev, rprivate) and the
 * user's options: a later option of a flag group or data key replaces an earlier one; order kept.
 */
export function tmpfsMountOptions(data: string): string[] {
  const options = ['noexec', 'nosuid', 'nodev', 'rprivate', ...(data === '' ? [] : data.split(','))];
  const seenGroups = new Set<number>();
  const seenKeys = new Set<string>();
  const out: string[] = [];
  for (let i = options.length - 1; i >= 0; i--) {
    const option = options[i] ?? '';
    if (option === 'defaults') continue;
    const group = TMPFS_FLAG_GROUPS.findIndex((g) => g.includes(option));
    if (group >= 0) {
      if (seenGroups.has(group)) continue;
      seenGroups.add(group);
      out.unshift(option);
      continue;
    }
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    if (eq < 0 || !TMPFS_DATA_KEYS.has(key)) {
      const parts = eq < 0 ? [option] : [key, option.slice(eq + 1)];
      throw new SystemError(`invalid tmpfs option [${parts.map((p) => JSON.stringify(p)).join(' ')}]`);
    }
    if (seenKeys.has(key)) continue;
    seenKeys.add(key);
    out.unshift(option);
  }
  return out;
}

/** Docker's --ulimit names (go-units ulimitNameMapping). */
const ULIMIT_NAMES = new Set([
  'as',
  'core',
  'cpu',
  'data',
  'fsize',
  'locks',
  'memlock',
  'msgqueue',
  'nice',
  'nofile',
  'nproc',
  'rss',
  'rtprio',
  'rttime',
  'sigpending',
  'stack',
]);

/** The spec's rlimits for Docker's ulimits; a bad one fails the start (SystemError: 500). */
export function rlimitsOf(ulimits: readonly Ulimit[]): { type: string; hard: number; soft: number }[] {
  return ulimits.map((u) => {
    const type = `RLIMIT_${u.name.toUpperCase()}`;
    // dockerd leaves the check to the OCI runtime; runc's words.
    if (!ULIMIT_NAMES.has(u.name)) throw new SystemError(`wrong rlimit value: ${type}: unknown`);
    if (u.soft > u.hard && u.hard !== -1) {
      throw new SystemError(
        `ulimit soft limit must be less than or equal to hard limit: ${u.soft} > ${u.hard}`,
      );
    }
    return { type, hard: u.hard, soft: u.soft };
  });
}

/**
 * What dockerd checks at create (400): the capability names, as `invalid CapAdd: unknown
 * capability: "CAP_X"`. Tmpfs options and ulimit names fail the start instead (500), as with
 * dockerd: buildOciSpec throws then.
 */
export function validateContainerOptions(options: ContainerOptions): void {
  for (const [field, list] of [
    ['CapAdd', options.capAdd],
    ['CapDrop', options.capDrop],
  ] as const) {
    try {
      normalizeCapabilities(list ?? []);
    } catch (err) {
      throw new InvalidParameterError(`invalid ${field}: ${(err as Error).message}`, { cause: err });
    }
  }
}

/**
 * The checks buildOciSpec makes of the options (500 with dockerd's texts), for the daemon to make
 * before it takes a VM for a start that would fail.
 */
export function checkStartOptions(options: ContainerOptions): void {
  for (const data of Object.values(options.tmpfs ?? {})) tmpfsMountOptions(data);
  rlimitsOf(options.ulimits ?? []);
}

export const DOCKER_MASKED_PATHS: readonly string[] = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
];

export const DOCKER_READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

function defaultMounts(options: ContainerOptions): OciMount[] {
  const privileged = options.privileged === true;
  const shmSize =
    options.shmSizeBytes !== undefined && options.shmSizeBytes > 0 ? options.shmSizeBytes : DEFAULT_SHM_SIZE;
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    privileged
      ? // Every device of the VM (dockerd: of the host).
        { destination: '/dev', type: 'devtmpfs', source: 'devtmpfs', options: ['nosuid', 'mode=755'] }
      : {
          destination: '/dev',
          type: 'tmpfs',
          source: 'tmpfs',
          options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'],
        },
    {
      destination: '/dev/pts',
      type: 'devpts',
      source: 'devpts',
      options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
    },
    // dockerd's privileged containers get /sys and the cgroup fs read-write.
    {
      destination: '/sys',
      type: 'sysfs',
      source: 'sysfs',
      options: privileged ? ['nosuid', 'noexec', 'nodev'] : ['nosuid', 'noexec', 'nodev', 'ro'],
    },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: privileged ? ['nosuid', 'noexec', 'nodev'] : ['ro', 'nosuid', 'noexec', 'nodev'],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', `size=${shmSize}`],
    },
  ];
}

/** dockerd's order after the defaults: its init, then the tmpfs mounts (by path). */
function optionMounts(options: ContainerOptions): OciMount[] {
  const mounts: OciMount[] = [];
  if (options.init) {
    mounts.push({
      destination: DOCKER_INIT_PATH,
      type: 'bind',
      source: GUEST_INIT_PATH,
      options: ['bind', 'ro'],
    });
  }
  for (const dest of Object.keys(options.tmpfs ?? {}).sort()) {
    mounts.push({
      destination: dest,
      type: 'tmpfs',
      source: 'tmpfs',
      options: tmpfsMountOptions(options.tmpfs?.[dest] ?? ''),
    });
  }
  return mounts;
}

/** The device cgroup rules of Docker's default spec: deny all, then the standard character devices. */
function defaultDeviceRules(): OciDeviceRule[] {
  const allow = (major: number, minor: number): OciDeviceRule => ({
    allow: true,
    type: 'c',
    major,
    minor,
    access: 'rwm',
  });
  return [
    { allow: false, access: 'rwm' },
    allow(1, 5), // /dev/zero
    allow(1, 3), // /dev/null
    allow(1, 9), // /dev/urandom
    allow(1, 8), // /dev/random
    allow(5, 0), // /dev/tty
    allow(5, 1), // /dev/console
    { allow: false, type: 'c', major: 10, minor: 229, access: 'rwm' }, // /dev/fuse
  ];
}

/**
 * dockerd's environment: PATH (defaulted by the daemon), then HOSTNAME, then the rest; a HOSTNAME
 * the container sets itself wins.
 */
function withHostname(env: readonly string[], hostname: string): string[] {
  if (env.some((e) => e.startsWith('HOSTNAME='))) return [...env];
  const out = [...env];
  const pathIndex = out.findIndex((e) => e.startsWith('PATH='));
  out.splice(pathIndex + 1, 0, `HOSTNAME=${hostname}`);
  return out;
}

export function buildOciSpec(input: OciSpecInput): OciSpec {
  const p = input.process;
  if (p.args.length === 0) throw new Error('buildOciSpec: process.args is empty');
  const options = input.options ?? {};
  const privileged = options.privileged === true;
  const caps = containerCapabilities(options);
  const rlimits = rlimitsOf(options.ulimits ?? []);
  const spec: OciSpec = {
    ociVersion: '1.0.2',
    process: {
      terminal: p.tty,
      // Resolved in the guest from Docker's User string (CreateContainerRequest.user).
      user: { uid: 0, gid: 0 },
      args: options.init ? [DOCKER_INIT_PATH, '--', ...p.args] : [...p.args],
      env: withHostname(p.env, input.hostname),
      cwd: p.cwd === '' ? '/' : p.cwd,
      capabilities: { bounding: [...caps], effective: [...caps], permitted: [...caps] },
      noNewPrivileges: false,
      oomScoreAdj: 0,
    },
    // The agent replaces the path with the rootfs's guest path.
    root: { path: 'rootfs', readonly: options.readonlyRootfs ?? false },
    hostname: input.hostname,
    mounts: [...defaultMounts(options), ...optionMounts(options), ...(input.extraMounts ?? [])],
    linux: {
      resources: { devices: privileged ? [{ allow: true, access: 'rwm' }] : defaultDeviceRules() },
      cgroupsPath: `/capsule/${input.containerId}`,
      namespaces: [{ type: 'mount' }, { type: 'uts' }, { type: 'pid' }, { type: 'ipc' }],
      maskedPaths: privileged ? [] : [...DOCKER_MASKED_PATHS],
      readonlyPaths: privileged ? [] : [...DOCKER_READONLY_PATHS],
    },
  };
  // dockerd sets rlimits only when asked (the process otherwise inherits its parent's).
  if (rlimits.length > 0) spec.process.rlimits = rlimits;
  // `-m`: the container's cgroup limit, as with dockerd; the VM is sized above it (the guest's
  // kernel and agent live beside the container), so an OOM kill lands on the container's processes.
  const limit = options.memoryLimitBytes ?? 0;
  if (limit > 0) spec.linux.resources.memory = { limit, swap: limit };
  return spec;
}
