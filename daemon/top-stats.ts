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

/**
 * One row of ps's output: a process, or with -L/-T one of its threads (the thread's own figures
 * over its process's, `tid` the thread's id; without -L/-T `tid` is the pid).
 */
type PsRow = GuestProcess & { tid: number };

/** The rows of `processes`, one per thread when `threads` (ps -L, -T), main thread first. */
function psRows(processes: GuestProcess[], threads: boolean): PsRow[] {
  if (!threads) return processes.map((p) => ({ ...p, tid: p.pid }));
  return processes.flatMap((p) =>
    p.threads.length === 0
      ? [{ ...p, tid: p.pid }]
      : p.threads.map((t) => ({
          ...p,
          tid: t.tid,
          comm: t.comm,
          state: t.state,
          cpuTimeMs: t.cpuTimeMs,
          startTimeSec: t.startTimeSec,
          elapsedMs: t.elapsedMs,
          nice: t.nice,
          flags: t.flags,
          priority: t.priority,
          processor: t.processor,
          wchan: t.wchan,
        })),
  );
}

/** procps' F: the PF_FORKNOEXEC (1) and PF_SUPERPRIV (4) bits of the task flags, in hex. */
const psFlags = (p: GuestProcess) => ((p.flags >> 6) & 0x7).toString(16);
/** WCHAN: the kernel function it waits in, `-` when none. */
const psWchan = (p: GuestProcess) => (p.wchan === '' || p.wchan === '0' ? '-' : p.wchan);

const defunct = (p: GuestProcess) => (p.state === 'Z' ? ' <defunct>' : '');
const comm: PsValue = (p) => p.comm + defunct(p);
const args: PsValue = (p) => p.cmd + defunct(p);
const pid: PsValue = (p) => String(p.pid);
const tid: PsValue = (p) => String((p as Partial<PsRow>).tid ?? p.pid);

/**
 * The procps format specifiers Capsule computes, with procps' headers. Names are case-sensitive as
 * in procps. Not here (needs figures the guest does not send): scheduling policy and rtprio,
 * signals, groups, page faults, namespaces, labels, cgroup.
 */
const PS_FIELDS: Record<string, PsColumn> = {
  pid: { header: 'PID', value: pid },
  tgid: { header: 'TGID', value: pid },
  // Without -L/-T a process is listed once, as its main thread: the thread id is the pid.
  lwp: { header: 'LWP', value: tid },
  spid: { header: 'SPID', value: tid },
  tid: { header: 'TID', value: tid },
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
  f: { header: 'F', value: psFlags },
  flag: { header: 'F', value: psFlags },
  flags: { header: 'F', value: psFlags },
  // procps' four ways of showing the priority: the kernel's (20 at nice 0), 39 minus it, 60 plus it.
  priority: { header: 'PRI', value: (p) => String(p.priority) },
  pri: { header: 'PRI', value: (p) => String(39 - p.priority) },
  opri: { header: 'PRI', value: (p) => String(60 + p.priority) },
  intpri: { header: 'PRI', value: (p) => String(60 + p.priority) },
  psr: { header: 'PSR', value: (p) => String(p.processor) },
  // SZ: the virtual size in pages (4 KiB on x86-64).
  sz: { header: 'SZ', value: (p) => String(Math.floor(p.vszKb / 4)) },
  addr: { header: 'ADDR', value: () => '-' },
  wchan: { header: 'WCHAN', value: psWchan },
};

/** procps specifiers Capsule knows of but cannot compute: a clear error rather than procps' "unknown". */
const PS_FIELDS_UNSUPPORTED = new Set(
  (
    'alarm blocked bsdstart caught cgname cgroup class cls cmaj_flt cmin_flt cnswap context cp ' +
    'cputimes cstime cutime drs egid egroup eip esp exe fgid fgroup fsgid fsgroup fsuid fsuser fuid ' +
    'fuser gid group ignored ipcns label lastcpu lsession luid lxc maj_flt majflt min_flt minflt ' +
    'mntns netns nwchan oom oomadj ouid pagein pcap pending pidns policy pss rbytes rchars rgid ' +
    'rgroup rops rtprio ruid ruser sched seat sgi_p sgid sgroup sig sigcatch sigignore sigmask size ' +
    'slice stackp suid supgid supgrp suser svgid svgroup svuid svuser trs tsig tsiz tty4 tty8 ' +
    'uid_hack unit userns utsns uunit wbytes wchars wname wops zone'
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

/** What ps_args ask for: the columns, whether threads are rows (-L, -T), which processes. */
export interface PsFormat {
  columns: PsColumn[];
  threads: boolean;
  /** The processes ps' selection options pick (any of them); undefined: all of the container's. */
  select?: (p: GuestProcess) => boolean;
}

/**
 * A selection option with its list (`-p 1,2`, `-p1`, `p 1`, `--pid=1`). dockerd 20.10 runs
 * `ps <ps_args> -q <the container's pids>`, procps refuses -q beside another selection option, and
 * dockerd then runs `ps <ps_args>` over the host's processes and keeps the container's: the
 * container's processes that the options select.
 */
interface PsSelector {
  /** procps' message when the list is missing. */
  missing: string;
  /** The predicate for one list item; undefined: procps' syntax error for the list. */
  item: (value: string) => ((p: GuestProcess) => boolean) | undefined;
  syntaxError: string;
}

const idList = (field: (p: GuestProcess) => number) => (value: string) =>
  /^\d+$/.test(value) ? (p: GuestProcess) => field(p) === Number(value) : undefined;
const PID_SELECTOR: PsSelector = {
  missing: 'error: list of process IDs must follow -p',
  item: idList((p) => p.pid),
  syntaxError: 'error: process ID list syntax error',
};
const USER_SELECTOR: PsSelector = {
  missing: 'error: list of users must follow -u',
  // A name is the container's (its /etc/passwd, as the guest reports it), a number the uid.
  item: (value) => (p) => (/^\d+$/.test(value) ? p.uid === Number(value) : p.user === value),
  syntaxError: 'error: user name does not exist',
};
const PS_SELECTORS: Record<string, PsSelector> = {
  '-p': PID_SELECTOR,
  '-q': PID_SELECTOR,
  p: PID_SELECTOR,
  q: PID_SELECTOR,
  '--pid': PID_SELECTOR,
  '--quick-pid': PID_SELECTOR,
  '-u': USER_SELECTOR,
  '-U': USER_SELECTOR,
  U: USER_SELECTOR,
  '--user': USER_SELECTOR,
  '--User': USER_SELECTOR,
  '-C': {
    missing: 'error: list of command names must follow -C',
    item: (value) => (p) => p.comm === value,
    syntaxError: 'error: command name list syntax error',
  },
  '-s': { ...PID_SELECTOR, missing: 'error: list of session IDs must follow -s', item: idList((p) => p.sid) },
  '--sid': {
    ...PID_SELECTOR,
    missing: 'error: list of session IDs must follow --sid',
    item: idList((p) => p.sid),
  },
  '--ppid': {
    ...PID_SELECTOR,
    missing: 'error: list of process IDs must follow --ppid',
    item: idList((p) => p.ppid),
  },
};

/** The predicate for a selection option's list (commas between items), or procps' error. */
function selection(selector: PsSelector, list: string | undefined): (p: GuestProcess) => boolean {
  if (list === undefined || list === '') throw psError(selector.missing);
  const items = list.split(',').map((v) => {
    const match = v === '' ? undefined : selector.item(v);
    if (!match) throw psError(selector.syntaxError);
    return match;
  });
  return (p) => items.some((match) => match(p));
}

/** The UNIX format letters procps combines into one default format. */
interface UnixFormatFlags {
  full: boolean; // -f
  extra: boolean; // -F
  long: boolean; // -l
  jobs: boolean; // -j
  noFlags: boolean; // -y (with -l: no F, RSS instead of ADDR)
  lwp: boolean; // -L
  spid: boolean; // -T
}

/**
 * procps' UNIX default format for a combination of -f, -F, -l, -j, -y, -L and -T (procps 4.0.2,
 * compared header by header: `ps -l`, `-lf`, `-ly`, `-F`, `-Fl`, `-j`, `-jf`, `-jl`, `-jF`, `-L`, `-fL`,
 * `-FL`, `-lL`, `-jL`, `-T`, `-fT`, `-lT`, `-FT`).
 */
function unixFormat(o: UnixFormatFlags): PsColumn[] {
  const named = o.full || o.extra;
  const cols: PsColumn[] = [];
  if (o.long && !o.noFlags) cols.push(col('f'));
  if (o.long) cols.push(col('s'));
  if (named) cols.push(col('user', 'UID'));
  else if (o.long) cols.push(col('uid'));
  cols.push(col('pid'));
  if (o.spid) cols.push(col('spid'));
  if (named || o.long) cols.push(col('ppid'));
  if (o.jobs) cols.push(col('pgid'), col('sid'));
  if (o.lwp) cols.push(col('lwp'));
  if (named || o.long) cols.push(col('c'));
  if (o.lwp && named) cols.push(col('nlwp'));
  if (o.long) {
    cols.push(col('opri'), col('ni'), o.noFlags ? col('rss') : col('addr'), col('sz'));
    // procps' -l prints WCHAN in a 6-character column and cuts the name to it.
    cols.push({ header: 'WCHAN', value: (p, now) => col('wchan').value(p, now).slice(0, 6) });
  }
  if (o.extra) {
    if (!o.long) cols.push(col('sz'));
    cols.push(col('rss'), col('psr'));
  }
  if (named) cols.push(col('stime'));
  cols.push(col('tname'), col('time'), named ? col('cmd') : col('ucmd'));
  return cols;
}

/**
 * The columns `ps <psArgs>` prints, for the options that make sense for one container's processes:
 * the tty/session selections (-a, -d, a, x, g) select nothing here, as dockerd passes ps the
 * container's pids; -e/-A select them all; -p/p/-q, -u/-U/U, -C, -s, --ppid (and their long forms)
 * select among them (PsSelector); formats: -f, -F, -l (-y), -j and their combinations, -L and -T (a row per
 * thread), u, -o/o/--format (repeatable), else ps' UNIX or BSD default. Anything else is a 500 that
 * says so, never silently the default columns.
 */
export function parsePsArgs(psArgs: string): PsFormat {
  const tokens = (psArgs === '' ? '-ef' : psArgs).split(' ').filter((t) => t !== '');
  const unixFlags: UnixFormatFlags = {
    full: false,
    extra: false,
    long: false,
    jobs: false,
    noFlags: false,
    lwp: false,
    spid: false,
  };
  let user = false;
  let bsd = false;
  let custom: PsColumn[] | undefined;
  const selections: ((p: GuestProcess) => boolean)[] = [];
  let selectAll = false;
  const addList = (list: string | undefined, option: string) => {
    if (list === undefined || list === '') throw psError(`error: format specification must follow ${option}`);
    custom = [...(custom ?? []), ...formatList(list)];
  };
  const unixLetters: Record<string, keyof UnixFormatFlags> = {
    f: 'full',
    F: 'extra',
    l: 'long',
    j: 'jobs',
    y: 'noFlags',
    L: 'lwp',
    T: 'spid',
  };
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i] ?? '';
    if (token.startsWith('--')) {
      const eq = token.indexOf('=');
      const name = eq < 0 ? token : token.slice(0, eq);
      const selector = PS_SELECTORS[name];
      if (name === '--format') addList(eq < 0 ? tokens[++i] : token.slice(eq + 1), '--format');
      else if (selector) selections.push(selection(selector, eq < 0 ? tokens[++i] : token.slice(eq + 1)));
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
      const selector = PS_SELECTORS[unix ? `-${c}` : c];
      if (selector) {
        const rest = letters.slice(j + 1);
        selections.push(selection(selector, rest !== '' ? rest : tokens[++i]));
        break;
      }
      if (unix && 'eA'.includes(c)) selectAll = true;
      if (unix ? 'eAadw'.includes(c) : 'axgw'.includes(c)) continue;
      const flag = unix ? unixLetters[c] : undefined;
      if (flag) unixFlags[flag] = true;
      else if (!unix && c === 'u') user = true;
      else throw unsupported(`the option ${unix ? '-' : ''}${c}`);
    }
  }
  // Selection options add up (ps -p 1 -u 2: either); -e selects every process whatever they say.
  const select =
    selectAll || selections.length === 0 ? undefined : (p: GuestProcess) => selections.some((s) => s(p));
  const format = psFormat(unixFlags, user, bsd, custom);
  return select ? { ...format, select } : format;
}

/** The columns (and thread rows) of the format options parsePsArgs found, with procps' errors. */
function psFormat(
  unixFlags: UnixFormatFlags,
  user: boolean,
  bsd: boolean,
  custom: PsColumn[] | undefined,
): PsFormat {
  if (unixFlags.noFlags && !unixFlags.long)
    throw psError('error: modifier -y without format -l makes no sense');
  if (unixFlags.lwp && unixFlags.spid)
    throw psError("error: thread flags conflict; can't use both -L and -T");
  const threads = unixFlags.lwp || unixFlags.spid;
  const unixFormatAsked = unixFlags.full || unixFlags.extra || unixFlags.long || unixFlags.jobs;
  if ((custom ? 1 : 0) + (unixFormatAsked ? 1 : 0) + (user ? 1 : 0) > 1)
    throw psError('error: conflicting format options');
  if (custom) return { columns: custom, threads };
  // procps mixes its BSD columns (STAT, BSD TIME) into -f/-l/-j when a BSD option is there too.
  if (bsd && unixFormatAsked) throw unsupported('a UNIX format (-f, -F, -l, -j) with BSD options');
  const threadColumn = unixFlags.lwp ? 'lwp' : 'spid';
  if (user) {
    // procps: `u -L` also gets NLWP after %CPU; `u -T` does not.
    const nlwpAfter = unixFlags.lwp ? '%CPU' : undefined;
    return {
      columns: threads ? withThreadColumns(USER_FORMAT, threadColumn, nlwpAfter) : USER_FORMAT,
      threads,
    };
  }
  if (bsd) return { columns: threads ? withThreadColumns(BSD_FORMAT, threadColumn) : BSD_FORMAT, threads };
  return { columns: unixFormat(unixFlags), threads };
}

/** A BSD format with -L or -T: LWP (SPID) after PID, and NLWP after `nlwpAfter` when given. */
function withThreadColumns(format: PsColumn[], threadColumn: 'lwp' | 'spid', nlwpAfter?: string): PsColumn[] {
  const out: PsColumn[] = [];
  for (const c of format) {
    out.push(c);
    if (c.header === 'PID') out.push(col(threadColumn));
    if (nlwpAfter !== undefined && c.header === nlwpAfter) out.push(col('nlwp'));
  }
  return out;
}

/**
 * `ps <psArgs>`'s titles and rows for the guest's processes. As dockerd, the output must have a PID
 * column. Unlike dockerd, which splits ps' text on blanks, a value with blanks (args, lstart) stays
 * one column wherever it is.
 */
export function formatTop(processes: GuestProcess[], psArgs = '', nowMs = Date.now()): TopResult {
  validatePsArgs(psArgs);
  const { columns, threads, select } = parsePsArgs(psArgs);
  const titles = columns.map((c) => c.header);
  if (!titles.includes('PID')) throw new SystemError("Couldn't find PID field in ps output");
  const selected = select ? processes.filter(select) : processes;
  return {
    titles,
    processes: psRows(selected, threads).map((p) => columns.map((c) => c.value(p, nowMs))),
  };
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
