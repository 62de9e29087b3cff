/**
 * What `docker top` and `docker stats` show, read in the guest: the processes of a container's
 * cgroup (from /proc), and the cgroup's figures (cgroup2 cpu.stat, memory.current/memory.stat,
 * pids.current/pids.max, io.stat) with the VM's totals (/proc/stat, /proc/meminfo, /proc/net/dev).
 * The VM holds one container: its memory limit is the cgroup's (`-m`), else the VM's RAM.
 *
 * Everything here only reads; a process or cgroup file that vanishes meanwhile is skipped.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readFileInRoot } from './rootfs-path';
import { parsePasswd } from './users';

/** Linux's USER_HZ: /proc times are in these ticks on every architecture Capsule runs on. */
const CLOCK_TICKS = 100;

export interface ProcessInfo {
  pid: number;
  ppid: number;
  uid: number;
  /** The user name from the container's /etc/passwd, else the uid in decimal. */
  user: string;
  /** Start as seconds since the epoch (guest clock). */
  startTimeSec: number;
  /** User + system CPU time, ms. */
  cpuTimeMs: number;
  /** Seconds the process has run (for ps's C column). */
  elapsedSec: number;
  /** "?" without a controlling terminal, else pts/N. */
  tty: string;
  /** The command line; `[comm]` for a process without one (kernel threads, zombies). */
  cmd: string;
  /** The command name from /proc/<pid>/stat (ps's comm, at most 15 bytes). */
  comm: string;
  /** The state letter (R, S, D, Z, T, t, I…), the first letter of ps's STAT. */
  state: string;
  /** The rest of STAT's flags come from these: nice (< N), session leader (s), threads (l), foreground (+). */
  nice: number;
  pgid: number;
  sid: number;
  /** The terminal's foreground process group; -1 without a terminal. */
  tpgid: number;
  /** Threads (ps's NLWP). */
  nlwp: number;
  /** Virtual size, resident set and locked memory, KiB (ps's VSZ, RSS, and STAT's L flag). */
  vszKb: number;
  rssKb: number;
  lockedKb: number;
  /** The VM's MemTotal, KiB, the same for every process: ps's %MEM is RSS over it. */
  memTotalKb: number;
  /** /proc/<pid>/stat's flags, priority and processor (ps's F, PRI, PSR); wchan ("0": not waiting). */
  flags: number;
  priority: number;
  processor: number;
  wchan: string;
  /** Every thread, main thread first, when there is more than one (ps -L); else empty. */
  threads: ThreadInfo[];
}

/** One thread's own figures (/proc/<pid>/task/<tid>/stat). */
export interface ThreadInfo {
  tid: number;
  comm: string;
  state: string;
  cpuTimeMs: number;
  startTimeSec: number;
  elapsedSec: number;
  nice: number;
  flags: number;
  priority: number;
  processor: number;
  wchan: string;
}

/** The fields of a /proc stat line a process and a thread share (field numbers as in proc(5)). */
function parseStat(stat: string, btime: number, nowSec: number) {
  const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
  // Fields after the command name, starting with field 3 (state).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const num = (i: number) => Number(f[i - 3] ?? 0);
  const startTimeSec = btime + num(22) / CLOCK_TICKS;
  return {
    comm,
    num,
    state: f[0] ?? '?',
    startTimeSec,
    cpuTimeMs: Math.round(((num(14) + num(15)) * 1000) / CLOCK_TICKS),
    elapsedSec: Math.max(0, nowSec - startTimeSec),
    nice: num(19),
    flags: num(9),
    priority: num(18),
    processor: num(39),
  };
}

async function readThreads(pid: number, btime: number, nowSec: number): Promise<ThreadInfo[]> {
  const tids = (await fs.readdir(`/proc/${pid}/task`).catch(() => []))
    .map((t) => Number(t))
    .filter((t) => Number.isInteger(t) && t > 0)
    .sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
  const out: ThreadInfo[] = [];
  for (const tid of tids) {
    const stat = await readText(`/proc/${pid}/task/${tid}/stat`);
    if (stat === undefined) continue;
    const t = parseStat(stat, btime, nowSec);
    out.push({
      tid,
      comm: t.comm,
      state: t.state,
      cpuTimeMs: t.cpuTimeMs,
      startTimeSec: Math.floor(t.startTimeSec),
      elapsedSec: t.elapsedSec,
      nice: t.nice,
      flags: t.flags,
      priority: t.priority,
      processor: t.processor,
      wchan: ((await readText(`/proc/${pid}/task/${tid}/wchan`)) ?? '0').trim(),
    });
  }
  return out;
}

async function readText(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** Every pid in the cgroup and its descendants (crun may nest cgroups under the container's). */
async function cgroupPids(dir: string): Promise<number[]> {
  const pids: number[] = [];
  const procs = await readText(path.join(dir, 'cgroup.procs'));
  for (const line of (procs ?? '').split('\n')) {
    const pid = Number.parseInt(line, 10);
    if (Number.isInteger(pid) && pid > 0) pids.push(pid);
  }
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) pids.push(...(await cgroupPids(path.join(dir, e.name))));
  return pids;
}

function ttyName(ttyNr: number): string {
  if (ttyNr === 0) return '?';
  const major = (ttyNr >> 8) & 0xfff;
  const minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00);
  if (major >= 136 && major <= 143) return `pts/${(major - 136) * 256 + minor}`;
  if (major === 4) return `tty${minor}`;
  return '?';
}

async function bootTimeSec(): Promise<number> {
  const stat = (await readText('/proc/stat')) ?? '';
  const m = /^btime (\d+)$/m.exec(stat);
  return m ? Number(m[1]) : Math.round(Date.now() / 1000 - os.uptime());
}

/** The processes of the cgroup `cgroupDir`, by pid; user names from the rootfs's /etc/passwd. */
export async function listProcesses(cgroupDir: string, rootfs: string): Promise<ProcessInfo[]> {
  const pids = [...new Set(await cgroupPids(cgroupDir))].sort((a, b) => a - b);
  const btime = await bootTimeSec();
  const memTotal = /^MemTotal:\s+(\d+) kB$/m.exec((await readText('/proc/meminfo')) ?? '');
  const memTotalKb = memTotal ? Number(memTotal[1]) : Math.round(os.totalmem() / 1024);
  const nowSec = Date.now() / 1000;
  const passwdText = await readFileInRoot(rootfs, '/etc/passwd').catch(() => undefined);
  const names = new Map<number, string>();
  for (const entry of passwdText === undefined ? [] : parsePasswd(passwdText)) {
    if (!names.has(entry.uid)) names.set(entry.uid, entry.name);
  }
  const out: ProcessInfo[] = [];
  for (const pid of pids) {
    const stat = await readText(`/proc/${pid}/stat`);
    const status = await readText(`/proc/${pid}/status`);
    if (stat === undefined || status === undefined) continue;
    const t = parseStat(stat, btime, nowSec);
    const { comm, num } = t;
    const uidLine = /^Uid:\s+(\d+)/m.exec(status);
    const uid = uidLine ? Number(uidLine[1]) : 0;
    // Kernel threads and zombies have no Vm* lines: 0, as ps shows them.
    const kb = (key: string, text = status) =>
      Number(new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(text)?.[1] ?? 0);
    // RSS from smaps_rollup (a walk of the page tables): the guest kernel (6.1) syncs a task's RSS
    // counters into VmRSS only every 64 page faults, so a sleeping busybox showed 4 kB there and
    // 52 kB here. VmRSS when smaps_rollup is not readable.
    const rollup = await readText(`/proc/${pid}/smaps_rollup`);
    const rssKb = rollup !== undefined && /^Rss:/m.test(rollup) ? kb('Rss', rollup) : kb('VmRSS');
    const cmdline = ((await readText(`/proc/${pid}/cmdline`)) ?? '').split('\0').filter((a) => a !== '');
    const nlwp = num(20);
    out.push({
      pid,
      ppid: num(4),
      uid,
      user: names.get(uid) ?? String(uid),
      startTimeSec: Math.floor(t.startTimeSec),
      cpuTimeMs: t.cpuTimeMs,
      elapsedSec: t.elapsedSec,
      tty: ttyName(num(7)),
      cmd: cmdline.length > 0 ? cmdline.join(' ') : `[${comm}]`,
      comm,
      state: t.state,
      nice: t.nice,
      pgid: num(5),
      sid: num(6),
      tpgid: num(8),
      nlwp,
      vszKb: kb('VmSize'),
      rssKb,
      lockedKb: kb('VmLck'),
      memTotalKb,
      flags: t.flags,
      priority: t.priority,
      processor: t.processor,
      wchan: ((await readText(`/proc/${pid}/wchan`)) ?? '0').trim(),
      threads: nlwp > 1 ? await readThreads(pid, btime, nowSec) : [],
    });
  }
  return out;
}

export interface IoEntry {
  major: number;
  minor: number;
  op: string;
  value: number;
}

export interface NetworkEntry {
  name: string;
  rxBytes: number;
  rxPackets: number;
  rxErrors: number;
  rxDropped: number;
  txBytes: number;
  txPackets: number;
  txErrors: number;
  txDropped: number;
}

export interface ContainerStats {
  /** cgroup cpu.stat, ns. */
  cpuUsageNs: number;
  cpuUserNs: number;
  cpuSystemNs: number;
  throttlingPeriods: number;
  throttledPeriods: number;
  throttledTimeNs: number;
  /** The VM's CPU time over all CPUs since boot (/proc/stat), ns: Docker's system_cpu_usage. */
  systemCpuNs: number;
  onlineCpus: number;
  memoryUsage: number;
  /** The cgroup's memory.max (`-m`), else the VM's RAM (MemTotal). */
  memoryLimit: number;
  memoryStat: Record<string, number>;
  pidsCurrent: number;
  /** 0 = no limit ("max"). */
  pidsLimit: number;
  io: IoEntry[];
  networks: NetworkEntry[];
}

function keyValues(text: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (text ?? '').split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined && /^\d+$/.test(value)) out[key] = Number(value);
  }
  return out;
}

/** io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N …` → Docker's blkio entries (v2 names). */
function parseIoStat(text: string | undefined): IoEntry[] {
  const out: IoEntry[] = [];
  for (const line of (text ?? '').split('\n')) {
    const [dev, ...pairs] = line.trim().split(/\s+/);
    const m = /^(\d+):(\d+)$/.exec(dev ?? '');
    if (!m) continue;
    for (const pair of pairs) {
      const [k, v] = pair.split('=');
      const op = k === 'rbytes' ? 'read' : k === 'wbytes' ? 'write' : undefined;
      if (op && v !== undefined) out.push({ major: Number(m[1]), minor: Number(m[2]), op, value: Number(v) });
    }
  }
  return out;
}

function parseNetDev(text: string | undefined): NetworkEntry[] {
  const out: NetworkEntry[] = [];
  for (const line of (text ?? '').split('\n').slice(2)) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim();
    if (name === 'lo' || name === '') continue;
    const v = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map((x) => Number(x));
    out.push({
      name,
      rxBytes: v[0] ?? 0,
      rxPackets: v[1] ?? 0,
      rxErrors: v[2] ?? 0,
      rxDropped: v[3] ?? 0,
      txBytes: v[8] ?? 0,
      txPackets: v[9] ?? 0,
      txErrors: v[10] ?? 0,
      txDropped: v[11] ?? 0,
    });
  }
  return out;
}

/** /proc/stat's aggregate cpu line (ticks) as ns, as runc/dockerd compute system_cpu_usage. */
function systemCpuNs(procStat: string | undefined): number {
  const line = (procStat ?? '').split('\n').find((l) => l.startsWith('cpu '));
  if (!line) return 0;
  const ticks = line
    .split(/\s+/)
    .slice(1, 8)
    .reduce((sum, x) => sum + (Number(x) || 0), 0);
  return Math.round((ticks * 1e9) / CLOCK_TICKS);
}

export async function containerStats(cgroupDir: string): Promise<ContainerStats> {
  const read = (name: string) => readText(path.join(cgroupDir, name));
  const [cpuStat, memCurrent, memMax, memStat, pidsCurrent, pidsMax, ioStat, procStat, meminfo, netDev] =
    await Promise.all([
      read('cpu.stat'),
      read('memory.current'),
      read('memory.max'),
      read('memory.stat'),
      read('pids.current'),
      read('pids.max'),
      read('io.stat'),
      readText('/proc/stat'),
      readText('/proc/meminfo'),
      readText('/proc/net/dev'),
    ]);
  const cpu = keyValues(cpuStat);
  const memTotalKb = /^MemTotal:\s+(\d+) kB$/m.exec(meminfo ?? '');
  const pidsMaxValue = (pidsMax ?? '').trim();
  return {
    cpuUsageNs: (cpu.usage_usec ?? 0) * 1000,
    cpuUserNs: (cpu.user_usec ?? 0) * 1000,
    cpuSystemNs: (cpu.system_usec ?? 0) * 1000,
    throttlingPeriods: cpu.nr_periods ?? 0,
    throttledPeriods: cpu.nr_throttled ?? 0,
    throttledTimeNs: (cpu.throttled_usec ?? 0) * 1000,
    systemCpuNs: systemCpuNs(procStat),
    onlineCpus: os.cpus().length || 1,
    memoryUsage: Number((memCurrent ?? '0').trim()) || 0,
    // `-m` is the cgroup's memory.max; without it the VM's RAM is the limit.
    memoryLimit: /^\d+$/.test((memMax ?? '').trim())
      ? Number((memMax ?? '').trim())
      : memTotalKb
        ? Number(memTotalKb[1]) * 1024
        : os.totalmem(),
    memoryStat: keyValues(memStat),
    pidsCurrent: Number((pidsCurrent ?? '0').trim()) || 0,
    pidsLimit: /^\d+$/.test(pidsMaxValue) ? Number(pidsMaxValue) : 0,
    io: parseIoStat(ioStat),
    networks: parseNetDev(netDev),
  };
}
