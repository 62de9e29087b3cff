/**
 * Starting an exec without a terminal through capsule-exec (guest/exec/capsule-exec.c), a static
 * program that does what `crun exec` does for the process in one fork: under TCG that is about
 * half of an exec's time in the guest (crun is dynamically linked, forks twice and reports its pid
 * through a file). Terminal execs still go through crun (capsule-console holds its console socket).
 *
 * This module turns an OCI process (the container's, with the exec's args, env, cwd and user) into
 * capsule-exec's command line, and reads its status line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { AgentError } from './errors';

/** Linux capability numbers (include/uapi/linux/capability.h). */
const CAPABILITY_NUMBERS: ReadonlyMap<string, number> = new Map(
  [
    'CHOWN',
    'DAC_OVERRIDE',
    'DAC_READ_SEARCH',
    'FOWNER',
    'FSETID',
    'KILL',
    'SETGID',
    'SETUID',
    'SETPCAP',
    'LINUX_IMMUTABLE',
    'NET_BIND_SERVICE',
    'NET_BROADCAST',
    'NET_ADMIN',
    'NET_RAW',
    'IPC_LOCK',
    'IPC_OWNER',
    'SYS_MODULE',
    'SYS_RAWIO',
    'SYS_CHROOT',
    'SYS_PTRACE',
    'SYS_PACCT',
    'SYS_ADMIN',
    'SYS_BOOT',
    'SYS_NICE',
    'SYS_RESOURCE',
    'SYS_TIME',
    'SYS_TTY_CONFIG',
    'MKNOD',
    'LEASE',
    'AUDIT_WRITE',
    'AUDIT_CONTROL',
    'SETFCAP',
    'MAC_OVERRIDE',
    'MAC_ADMIN',
    'SYSLOG',
    'WAKE_ALARM',
    'BLOCK_SUSPEND',
    'AUDIT_READ',
    'PERFMON',
    'BPF',
    'CHECKPOINT_RESTORE',
  ].map((name, i) => [`CAP_${name}`, i]),
);

/** RLIMIT_* numbers (asm-generic/resource.h, as on x86-64). */
const RLIMIT_NUMBERS: ReadonlyMap<string, number> = new Map(
  [
    'CPU',
    'FSIZE',
    'DATA',
    'STACK',
    'CORE',
    'RSS',
    'NPROC',
    'NOFILE',
    'MEMLOCK',
    'AS',
    'LOCKS',
    'SIGPENDING',
    'MSGQUEUE',
    'NICE',
    'RTPRIO',
    'RTTIME',
  ].map((name, i) => [`RLIMIT_${name}`, i]),
);

/** OCI namespace types → the names of /proc/PID/ns/ capsule-exec joins. */
const NAMESPACE_FILES: ReadonlyMap<string, string> = new Map([
  ['mount', 'mnt'],
  ['uts', 'uts'],
  ['pid', 'pid'],
  ['ipc', 'ipc'],
  ['network', 'net'],
  ['cgroup', 'cgroup'],
]);

/** The part of an OCI process capsule-exec takes (config.json's, with the exec's fields). */
export interface ExecProcessSpec {
  args: string[];
  env: string[];
  cwd: string;
  user: { uid: number; gid: number; additionalGids?: number[]; umask?: number };
  capabilities?: Partial<
    Record<'bounding' | 'effective' | 'permitted' | 'inheritable' | 'ambient', string[]>
  >;
  rlimits?: { type: string; soft: number; hard: number }[];
  noNewPrivileges?: boolean;
  oomScoreAdj?: number;
}

/**
 * The /proc/PID/ns names to join for the container's namespaces (OCI types), or undefined when
 * one of them is not for capsule-exec (a user namespace): such a container's execs use crun.
 */
export function helperNamespaces(types: readonly string[]): string[] | undefined {
  const out: string[] = [];
  for (const t of types) {
    const name = NAMESPACE_FILES.get(t);
    if (name === undefined) return undefined;
    out.push(name);
  }
  return out;
}

function capabilityMask(names: readonly string[]): string {
  let mask = 0n;
  for (const name of names) {
    const bit = CAPABILITY_NUMBERS.get(name);
    if (bit === undefined)
      throw new AgentError('InvalidArgument', `unknown capability ${JSON.stringify(name)}`, 126);
    mask |= 1n << BigInt(bit);
  }
  return mask.toString(16);
}

function rlimitValue(v: number): string {
  // OCI writes RLIM_INFINITY as 2^64-1, which a JSON number cannot hold exactly.
  return v >= 2 ** 63 || v < 0 ? '-1' : String(v);
}

/** capsule-exec's argv for `proc` in the container whose init is `initPid`. */
export function execHelperArgs(
  initPid: number,
  namespaces: readonly string[],
  proc: ExecProcessSpec,
): string[] {
  const argv = ['--pid', String(initPid)];
  for (const ns of namespaces) argv.push('--ns', ns);
  argv.push('--uid', String(proc.user.uid), '--gid', String(proc.user.gid));
  argv.push('--groups', (proc.user.additionalGids ?? []).join(','));
  argv.push('--cwd', proc.cwd);
  for (const e of proc.env) argv.push('--env', e);
  const caps = proc.capabilities;
  if (caps !== undefined) {
    for (const set of ['bounding', 'effective', 'permitted', 'inheritable', 'ambient'] as const) {
      argv.push(`--cap-${set}`, capabilityMask(caps[set] ?? []));
    }
  }
  for (const r of proc.rlimits ?? []) {
    const n = RLIMIT_NUMBERS.get(r.type);
    if (n === undefined)
      throw new AgentError('InvalidArgument', `unknown rlimit ${JSON.stringify(r.type)}`, 126);
    argv.push('--rlimit', `${n}:${rlimitValue(r.soft)}:${rlimitValue(r.hard)}`);
  }
  if (proc.noNewPrivileges === true) argv.push('--no-new-privs');
  // As crun: an oomScoreAdj of 0 is not written (the process keeps its parent's, 0 here).
  if (proc.oomScoreAdj !== undefined && proc.oomScoreAdj !== 0)
    argv.push('--oom-score-adj', String(proc.oomScoreAdj));
  if (proc.user.umask !== undefined) argv.push('--umask', proc.user.umask.toString(8));
  argv.push('--', ...proc.args);
  return argv;
}

/** What capsule-exec's status line says. */
export type HelperStatus = { pid: number } | { error: string };

export function parseHelperStatus(text: string): HelperStatus | undefined {
  const line = text.endsWith('\n') ? text.slice(0, -1) : text;
  const pid = /^pid (\d+)$/.exec(line);
  if (pid) return { pid: Number(pid[1]) };
  if (line.startsWith('error ')) return { error: line.slice('error '.length) };
  return undefined;
}

/** Spawns capsule-exec; stdio 0-2 as crun's would be, fd 3 its status pipe. */
export function spawnExecHelper(helperPath: string, argv: string[], openStdin: boolean): ChildProcess {
  return spawn(helperPath, argv, { stdio: [openStdin ? 'pipe' : 'ignore', 'pipe', 'pipe', 'pipe'] });
}

/**
 * Reads the status line capsule-exec writes on fd 3 (then closes). Resolves undefined when the pipe
 * closed without one (the helper died or could not run).
 */
export function readHelperStatus(child: ChildProcess): Promise<HelperStatus | undefined> {
  const pipe = child.stdio[3] as Readable | null;
  if (!pipe) return Promise.resolve(undefined);
  return new Promise((resolve) => {
    let text = '';
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => (text += d));
    pipe.once('error', () => resolve(undefined));
    pipe.once('close', () => resolve(parseHelperStatus(text)));
  });
}
