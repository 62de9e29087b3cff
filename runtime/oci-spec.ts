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
 * - terminal is false: TTY processes are not supported yet.
 *
 * rlimits are not set, as with dockerd (the process inherits the agent's); noNewPrivileges false.
 */
import type { ProcessSpec } from './types';

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
    noNewPrivileges: boolean;
    oomScoreAdj: number;
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    resources: { devices: OciDeviceRule[] };
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
  readonlyRootfs?: boolean;
  /** Bind mounts and the like, after the defaults (volumes, /etc/hosts …). */
  extraMounts?: OciMount[];
}

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

function defaultMounts(): OciMount[] {
  return [
    { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
    {
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
    { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    {
      destination: '/sys/fs/cgroup',
      type: 'cgroup',
      source: 'cgroup',
      options: ['ro', 'nosuid', 'noexec', 'nodev'],
    },
    { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
    {
      destination: '/dev/shm',
      type: 'tmpfs',
      source: 'shm',
      options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=67108864'],
    },
  ];
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
  const caps = [...DOCKER_DEFAULT_CAPABILITIES];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      // Resolved in the guest from Docker's User string (CreateContainerRequest.user).
      user: { uid: 0, gid: 0 },
      args: [...p.args],
      env: withHostname(p.env, input.hostname),
      cwd: p.cwd === '' ? '/' : p.cwd,
      capabilities: { bounding: [...caps], effective: [...caps], permitted: [...caps] },
      noNewPrivileges: false,
      oomScoreAdj: 0,
    },
    // The agent replaces the path with the rootfs's guest path.
    root: { path: 'rootfs', readonly: input.readonlyRootfs ?? false },
    hostname: input.hostname,
    mounts: [...defaultMounts(), ...(input.extraMounts ?? [])],
    linux: {
      resources: { devices: defaultDeviceRules() },
      cgroupsPath: `/capsule/${input.containerId}`,
      namespaces: [{ type: 'mount' }, { type: 'uts' }, { type: 'pid' }, { type: 'ipc' }],
      maskedPaths: [...DOCKER_MASKED_PATHS],
      readonlyPaths: [...DOCKER_READONLY_PATHS],
    },
  };
}
