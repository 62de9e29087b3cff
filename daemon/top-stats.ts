/**
 * `docker top` and `docker stats` from the guest's own figures (agent.proto ListProcesses and
 * StatsContainer): the processes of the container's cgroup, and its cgroup's CPU, memory, pids and
 * I/O with the VM's totals (the VM's RAM is the container's memory limit, its CPU time the system
 * CPU time). Shapes as dockerd 20.10 on cgroup v2.
 *
 * top: dockerd runs the host's `ps` with ps_args and keeps the container's rows. The processes live
 * in the guest, which has no procps: the guest sends each process's figures from /proc and the
 * daemon formats them as procps would for ps_args (default `-ef`; `-f`, `aux`/`u`, `-o`/`o`/
 * `--format` with procps' specifiers and headers). An option it cannot honour is a 500 naming it,
 * never the default columns. The pids are the guest's; times are the daemon's local time, as ps's.
 *
 * stats: one sample per second while streaming; `stream=false` waits for a second sample so that
 * precpu_stats is filled (as dockerd does, the CLI computes CPU % from the pair); `one-shot` gives
 * the first sample alone. A container that is not running gives one zeroed sample.
 */
import { ConflictError, SystemError } from '../common/errdefs';
import type { GuestProcess, GuestStats, RunningSandbox } from '../runtime/types';

/** A container's figures as the guest read them (the API encodes them as dockerd's StatsJSON). */
export type StatsFigures = GuestStats;

export interface TopResult {
  titles: string[];
  processes: string[][];
}

export interface StatsSample {
  id: string;
  /** With the leading slash, as dockerd's `name`. */
  name: string;
  /** ms since the epoch; 0 when the container is not running (dockerd's zero time). */
  readMs: number;
  preReadMs: number;
  stats?: GuestStats;
  preStats?: GuestStats;
}

export interface MonitoredContainers {
  /** NotFound, or Conflict when not running (dockerd's words). */
  execTarget(ref: string): { id: string; sandbox: RunningSandbox };
  inspect(ref: string): { id: string; name: string; state: { running: boolean } };
}

/** What a process shows in a ps column; `nowMs` is the daemon's clock (ps's time of the listing). */
type PsValue = (p: GuestProcess, nowMs: number) => string;

interface PsColumn {
  header: string;
  value: PsValue;
}

const pad2 = (n: number) => String(n).padStart(2, '0');
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

/**
 * ps's STIME (and `u`'s START): HH:MM when started today, MonDD earlier this year, else the year
 * (local time, as procps compares the calendar day, not the last 24 hours).
 */
export function psStartTime(startSec: number, nowMs: number): string {
  const d = new Date(startSec * 1000);
  const now = new Date(nowMs);
  if (d.getFullYear() !== now.getFullYear()) return String(d.getFullYear());
  if (d.getMonth() !== now.getMonth() || d.getDate() !== now.getDate()) {
    return `${MONTHS[d.getMonth()] ?? ''}${pad2(d.getDate())}`;
  }
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

/** ps's STARTED (`-o start`): HH:MM:SS within the last 24 hours, else `Mon DD`. */
function psStarted(startSec: number, nowMs: number): string {
  const d = new Date(startSec * 1000);
  if (startSec + 24 * 3600 > nowMs / 1000) {
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  return `${MONTHS[d.getMonth()] ?? ''} ${pad2(d.getDate())}`;
}

/** ps's `lstart`: ctime's layout, `Mon Nov 30 02:51:31 2026`. */
function psLongStart(startSec: number): string {
  const d = new Date(startSec * 1000);
  const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const day = String(d.getDate()).padStart(2, ' ');
  return `${DAYS[d.getDay()] ?? ''} ${MONTHS[d.getMonth()] ?? ''} ${day} ${time} ${d.getFullYear()}`;
}

/** ps's TIME: cumulative CPU time as [DD-]HH:MM:SS. */
export function psCpuTime(ms: number): string {
  let s = Math.floor(ms / 1000);
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const hms = `${pad2(Math.floor(s / 3600))}:${pad2(Math.floor((s % 3600) / 60))}:${pad2(s % 60)}`;
  return days > 0 ? `${days}-${hms}` : hms;
}

/** BSD TIME (`u`, `x`): cumulative CPU time as M:SS, minutes unbounded. */
function psBsdTime(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${pad2(s % 60)}`;
}

/** ps's ELAPSED (`etime`): [[DD-]HH:]MM:SS. */
function psElapsed(ms: number): string {
  let t = Math.floor(ms / 1000);
  const ss = t % 60;
  t = Math.floor(t / 60);
  const mm = t % 60;
  t = Math.floor(t / 60);
  const hh = t % 24;
  const dd = Math.floor(t / 24);
  return `${dd > 0 ? `${dd}-` : ''}${dd > 0 || hh > 0 ? `${pad2(hh)}:` : ''}${pad2(mm)}:${pad2(ss)}`;
}

/** Whole seconds the process has lived: procps divides by these, 0 giving 0. */
const lifeSec = (p: GuestProcess) => Math.floor(p.elapsedMs / 1000);

/** ps's C: integer percent of CPU over the process's life, at most 99. */
function psC(p: GuestProcess): string {
  const sec = lifeSec(p);
  return String(sec > 0 ? Math.min(99, Math.floor(p.cpuTimeMs / 10 / sec)) : 0);
}

/** ps's %CPU: per mille of CPU over the process's life, as N.N (no decimal from 100% up). */
function psPercentCpu(p: GuestProcess): string {
  const sec = lifeSec(p);
  const permille = sec > 0 ? Math.floor(p.cpuTimeMs / sec) : 0;
  return permille > 999 ? String(Math.floor(permille / 10)) : `${Math.floor(permille / 10)}.${permille % 10}`;
}

/** ps's %MEM: RSS over the VM's RAM, N.N, at most 99.9. */
function psPercentMem(p: GuestProcess): string {
  const permille = p.memTotalKb > 0 ? Math.min(999, Math.floor((p.rssKb * 1000) / p.memTotalKb)) : 0;
  return `${Math.floor(permille / 10)}.${permille % 10}`;
}

/** ps's STAT: the state letter, then <N (nice), L (locked pages), s (session leader), l (threads), + (foreground). */
function psStat(p: GuestProcess): string {
  let out = p.state;
  if (p.nice < 0) out += '<';
  if (p.nice > 0) out += 'N';
  if (p.lockedKb > 0) out += 'L';
  if (p.sid === p.pid) out += 's';
  if (p.nlwp > 1) out += 'l';
  if (p.pgid === p.tpgid) out += '+';
  return out;
}

const defunct = (p: GuestProcess) => (p.state === 'Z' ? ' <defunct>' : '');
const comm: PsValue = (p) => p.comm + defunct(p);
const args: PsValue = (p) => p.cmd + defunct(p);
const pid: PsValue = (p) => String(p.pid);

/**
 * The procps format specifiers Capsule computes, with procps' headers. Names are case-sensitive as
 * in procps. Not here (needs figures the guest does not send): scheduling (pri, psr, rtprio,
 * policy), signals, groups, wchan, page faults, namespaces, labels, cgroup.
 */
const PS_FIELDS: Record<string, PsColumn> = {
  pid: { header: 'PID', value: pid },
  tgid: { header: 'TGID', value: pid },
  // Without -L a process is listed once, as its main thread: the thread id is the pid.
  lwp: { header: 'LWP', value: pid },
  spid: { header: 'SPID', value: pid },
  tid: { header: 'TID', value: pid },
  ppid: { header: 'PPID', value: (p) => String(p.ppid) },
  pgid: { header: 'PGID', value: (p) => String(p.pgid) },
  pgrp: { header: 'PGRP', value: (p) => String(p.pgid) },
  sid: { header: 'SID', value: (p) => String(p.sid) },
  sess: { header: 'SESS', value: (p) => String(p.sid) },
  session: { header: 'SESS', value: (p) => String(p.sid) },
  tpgid: { header: 'TPGID', value: (p) => String(p.tpgid) },
  uid: { header: 'UID', value: (p) => String(p.uid) },
  euid: { header: 'EUID', value: (p) => String(p.uid) },
  user: { header: 'USER', value: (p) => p.user },
  euser: { header: 'EUSER', value: (p) => p.user },
  uname: { header: 'USER', value: (p) => p.user },
  comm: { header: 'COMMAND', value: comm },
  ucomm: { header: 'COMMAND', value: comm },
  ucmd: { header: 'CMD', value: comm },
  fname: { header: 'COMMAND', value: (p) => p.comm.slice(0, 8) },
  args: { header: 'COMMAND', value: args },
  command: { header: 'COMMAND', value: args },
  cmd: { header: 'CMD', value: args },
  rss: { header: 'RSS', value: (p) => String(p.rssKb) },
  rssize: { header: 'RSS', value: (p) => String(p.rssKb) },
  rsz: { header: 'RSZ', value: (p) => String(p.rssKb) },
  vsz: { header: 'VSZ', value: (p) => String(p.vszKb) },
  vsize: { header: 'VSZ', value: (p) => String(p.vszKb) },
  stat: { header: 'STAT', value: psStat },
  s: { header: 'S', value: (p) => p.state },
  state: { header: 'S', value: (p) => p.state },
  c: { header: 'C', value: psC },
  '%cpu': { header: '%CPU', value: psPercentCpu },
  pcpu: { header: '%CPU', value: psPercentCpu },
  '%mem': { header: '%MEM', value: psPercentMem },
  pmem: { header: '%MEM', value: psPercentMem },
  etime: { header: 'ELAPSED', value: (p) => psElapsed(p.elapsedMs) },
  etimes: { header: 'ELAPSED', value: (p) => String(lifeSec(p)) },
  time: { header: 'TIME', value: (p) => psCpuTime(p.cpuTimeMs) },
  cputime: { header: 'TIME', value: (p) => psCpuTime(p.cpuTimeMs) },
  times: { header: 'TIME', value: (p) => String(Math.floor(p.cpuTimeMs / 1000)) },
  bsdtime: { header: 'TIME', value: (p) => psBsdTime(p.cpuTimeMs) },
  tty: { header: 'TT', value: (p) => p.tty },
  tt: { header: 'TT', value: (p) => p.tty },
  tname: { header: 'TTY', value: (p) => p.tty },
  stime: { header: 'STIME', value: (p, now) => psStartTime(p.startTimeSec, now) },
  start_time: { header: 'START', value: (p, now) => psStartTime(p.startTimeSec, now) },
  start: { header: 'STARTED', value: (p, now) => psStarted(p.startTimeSec, now) },
  lstart: { header: 'STARTED', value: (p) => psLongStart(p.startTimeSec) },
  nlwp: { header: 'NLWP', value: (p) => String(p.nlwp) },
  thcount: { header: 'THCNT', value: (p) => String(p.nlwp) },
  ni: { header: 'NI', value: (p) => String(p.nice) },
  nice: { header: 'NI', value: (p) => String(p.nice) },
};

/** procps specifiers Capsule knows of but cannot compute: a clear error rather than procps' "unknown". */
const PS_FIELDS_UNSUPPORTED = new Set(
  (
    'addr alarm blocked bsdstart caught cgname cgroup class cls cmaj_flt cmin_flt cnswap context cp ' +
    'cputimes cstime cutime drs egid egroup eip esp exe f fgid fgroup flag flags fsgid fsgroup fsuid ' +
    'fsuser fuid fuser gid group ignored intpri ipcns label lastcpu lsession luid lxc maj_flt majflt ' +
    'min_flt minflt mntns netns nwchan oom oomadj opri ouid pagein pcap pending pidns policy pri psr pss ' +
    'rbytes rchars rgid rgroup rops rtprio ruid ruser sched seat sgi_p sgid sgroup sig sigcatch ' +
    'sigignore sigmask size slice stackp suid supgid supgrp suser svgid svgroup svuid svuser sz trs ' +
    'tsig tsiz tty4 tty8 uid_hack unit userns utsns uunit wbytes wchan wchars wname wops zone'
  ).split(' '),
);

const col = (name: string, header?: string): PsColumn => {
  const field = PS_FIELDS[name];
  if (!field) throw new Error(`no ps field ${name}`);
  return { header: header ?? field.header, value: field.value };
};

/** `ps -ef` / `-f`, dockerd's default: UID PID PPID C STIME TTY TIME CMD (UID shows the name). */
const FULL_FORMAT = [
  col('user', 'UID'),
  col('pid'),
  col('ppid'),
  col('c'),
  col('stime'),
  col('tname'),
  col('time'),
  col('cmd'),
];
/** `ps aux` / `u`: USER PID %CPU %MEM VSZ RSS TTY STAT START TIME COMMAND. */
const USER_FORMAT = [
  'user',
  'pid',
  '%cpu',
  '%mem',
  'vsz',
  'rss',
  'tname',
  'stat',
  'start_time',
  'bsdtime',
  'args',
].map((n) => col(n));
/** `ps -e` (UNIX options without a format): PID TTY TIME CMD, CMD the command name. */
const UNIX_FORMAT = ['pid', 'tname', 'time', 'ucmd'].map((n) => col(n));
/** `ps ax` (BSD options without a format): PID TTY STAT TIME COMMAND. */
const BSD_FORMAT = ['pid', 'tname', 'stat', 'bsdtime', 'args'].map((n) => col(n));

export const TOP_TITLES = FULL_FORMAT.map((c) => c.header);

/** A ps failure as dockerd reports it: 500 with `ps: ` and ps's first line of stderr. */
const psError = (message: string) => new SystemError(`ps: ${message}`);
const unsupported = (what: string) =>
  psError(
    `${what} is not supported by Capsule's docker top (the guest's processes are formatted without procps)`,
  );

/**
 * dockerd's check before running ps: a column may be renamed to PID only if it is the pid column
 * (`-o pid=PID`), or the PID column dockerd filters on could be another one.
 */
export function validatePsArgs(psArgs: string): void {
  for (const m of psArgs.matchAll(/\s+(\S*)=\s*(PID\S*)/g)) {
    if (m[1] !== 'pid') throw new SystemError(`specifying "${m[1] ?? ''}=${m[2] ?? ''}" is not allowed`);
  }
}

/** Columns of a `-o` list: comma-separated specifiers, each optionally `name=HEADER`. */
function formatList(list: string): PsColumn[] {
  return list.split(',').map((item) => {
    const eq = item.indexOf('=');
    const name = eq < 0 ? item : item.slice(0, eq);
    if (name === '') throw psError('error: improper format list');
    const field = PS_FIELDS[name];
    if (!field) {
      if (PS_FIELDS_UNSUPPORTED.has(name)) throw unsupported(`the format specifier "${name}"`);
      throw psError(`error: unknown user-defined format specifier "${name}"`);
    }
    return { header: eq < 0 ? field.header : item.slice(eq + 1), value: field.value };
  });
}

/** Long options procps has and Capsule does not (others get procps' own "unknown" error). */
const LONG_OPTIONS = new Set(
  (
    '--cols --columns --context --cumulative --deselect --forest --group --Group --headers --help --info ' +
    '--lines --no-headers --no-heading --pid --ppid --quick-pid --rows --sid --signames --sort --tty --user ' +
    '--User --version --width'
  ).split(' '),
);

/**
 * The columns `ps <psArgs>` prints, for the options that make sense for one container's processes:
 * selection options (-e, -A, -a, -d, a, x, g) select nothing here, as dockerd passes ps the
 * container's pids; formats: -f, u, -o/o/--format (repeatable), else ps' UNIX or BSD default.
 * Anything else is a 500 that says so, never silently the default columns.
 */
export function parsePsArgs(psArgs: string): PsColumn[] {
  const tokens = (psArgs === '' ? '-ef' : psArgs).split(' ').filter((t) => t !== '');
  let full = false;
  let user = false;
  let bsd = false;
  let custom: PsColumn[] | undefined;
  const addList = (list: string | undefined, option: string) => {
    if (list === undefined || list === '') throw psError(`error: format specification must follow ${option}`);
    custom = [...(custom ?? []), ...formatList(list)];
  };
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i] ?? '';
    if (token.startsWith('--')) {
      const eq = token.indexOf('=');
      const name = eq < 0 ? token : token.slice(0, eq);
      if (name === '--format') addList(eq < 0 ? tokens[++i] : token.slice(eq + 1), '--format');
      else if (LONG_OPTIONS.has(name)) throw unsupported(`the option ${name}`);
      else throw psError('error: unknown gnu long option');
      continue;
    }
    // procps reads `-aux` and `-ax` as the BSD options they were meant to be.
    const unix = token.startsWith('-') && !/^-(?=.*a)(?=.*[ux])[aux]+$/.test(token);
    const letters = token.startsWith('-') ? token.slice(1) : token;
    if (!unix) bsd = true;
    for (let j = 0; j < letters.length; j++) {
      const c = letters[j] ?? '';
      if (c === 'o') {
        const rest = letters.slice(j + 1);
        addList(rest !== '' ? rest : tokens[++i], unix ? '-o' : 'o');
        break;
      }
      if (unix ? 'eAadw'.includes(c) : 'axgw'.includes(c)) continue;
      if (unix && c === 'f') full = true;
      else if (!unix && c === 'u') user = true;
      else throw unsupported(`the option ${unix ? '-' : ''}${c}`);
    }
  }
  if ((custom ? 1 : 0) + (full ? 1 : 0) + (user ? 1 : 0) > 1)
    throw psError('error: conflicting format options');
  return custom ?? (full ? FULL_FORMAT : user ? USER_FORMAT : bsd ? BSD_FORMAT : UNIX_FORMAT);
}

/**
 * `ps <psArgs>`'s titles and rows for the guest's processes. As dockerd, the output must have a PID
 * column. Unlike dockerd, which splits ps' text on blanks, a value with blanks (args, lstart) stays
 * one column wherever it is.
 */
export function formatTop(processes: GuestProcess[], psArgs = '', nowMs = Date.now()): TopResult {
  validatePsArgs(psArgs);
  const columns = parsePsArgs(psArgs);
  const titles = columns.map((c) => c.header);
  if (!titles.includes('PID')) throw new SystemError("Couldn't find PID field in ps output");
  return { titles, processes: processes.map((p) => columns.map((c) => c.value(p, nowMs))) };
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

export class ContainerMonitor {
  constructor(
    private readonly containers: MonitoredContainers,
    /** Time between two samples (dockerd collects every second). */
    private readonly intervalMs = 1000,
  ) {}

  /** `docker top`: dockerd's order, ps_args' check, then the container, then ps' own errors. */
  async top(ref: string, psArgs = ''): Promise<TopResult> {
    validatePsArgs(psArgs);
    const { sandbox } = this.containers.execTarget(ref);
    // Before the guest round trip: an option Capsule cannot format fails without one.
    parsePsArgs(psArgs);
    return formatTop(await sandbox.top(), psArgs);
  }

  /**
   * Samples of the container's figures: one per interval until `signal` aborts or the container
   * stops (streaming), else one (see the file comment for stream=false and one-shot).
   */
  async *stats(
    ref: string,
    options: { stream: boolean; oneShot: boolean },
    signal?: AbortSignal,
  ): AsyncGenerator<StatsSample> {
    const view = this.containers.inspect(ref);
    const base = { id: view.id, name: view.name };
    let sandbox: RunningSandbox | undefined;
    try {
      sandbox = view.state.running ? this.containers.execTarget(view.id).sandbox : undefined;
    } catch (err) {
      if (!(err instanceof ConflictError)) throw err;
    }
    if (!sandbox) {
      yield { ...base, readMs: 0, preReadMs: 0 };
      return;
    }
    let previous: { stats: GuestStats; readMs: number } | undefined;
    if (!options.stream && !options.oneShot) {
      previous = { stats: await sandbox.stats(), readMs: Date.now() };
      await sleep(this.intervalMs, signal);
    }
    for (;;) {
      if (signal?.aborted) return;
      let stats: GuestStats;
      try {
        stats = await sandbox.stats();
      } catch (err) {
        // The container stopped meanwhile: the stream ends (dockerd's does too).
        if (previous) return;
        throw err;
      }
      const readMs = Date.now();
      yield {
        ...base,
        readMs,
        preReadMs: previous?.readMs ?? 0,
        stats,
        ...(previous ? { preStats: previous.stats } : {}),
      };
      if (!options.stream) return;
      previous = { stats, readMs };
      await sleep(this.intervalMs, signal);
    }
  }
}
