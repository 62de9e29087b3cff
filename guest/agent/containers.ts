/**
 * Containers inside the guest: OCI bundles handed to crun, their init process, the extra processes
 * of `docker exec`, their stdio and exit.
 *
 * The agent never re-implements what the OCI runtime does (namespaces, USER, capabilities, mounts):
 * it writes config.json, runs `crun run` (an exec: `crun exec --process`), and watches. crun stays
 * the parent of the process for its whole life, which is what gives the agent the exit status (Node
 * cannot reap a process it did not spawn). Whether the process *started* is told apart from
 * "started, then failed" by crun's --pid-file: crun writes it only once the process is created and
 * its executable resolved; a crun that exits without having written it failed to start, and its
 * --log file says why (see start-failure.ts).
 *
 * Output and stdin: process-io.ts (backpressure, never loss).
 *
 * A process with a terminal (Docker's Tty: `process.terminal` true) has crun create a pty in the
 * container and send its master over a --console-socket; capsule-console (guest/console/) receives
 * it and carries it over the same pipes, so such a process is crun run under capsule-console, with
 * the pid file, exit status and errors as without a terminal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as osConstants } from 'node:os';
import { promises as fs, watch, writeFileSync, type FSWatcher } from 'node:fs';
import path from 'node:path';
import { AgentError } from './errors';
import { ProcessIO, type OutputSink } from './process-io';
import { mkdirAllInRoot, readFileInRoot, waitForRootfs } from './rootfs-path';
import {
  execHelperArgs,
  helperNamespaces,
  readHelperStatus,
  spawnExecHelper,
  type ExecProcessSpec,
} from './exec-helper';
import { crunLogErrors, translateExecFailure, translateStartFailure } from './start-failure';
import { parseGroup, parsePasswd, resolveUser, UserLookupError, type ResolvedUser } from './users';

export type { OutputSink } from './process-io';

export interface ContainerManagerOptions {
  /** The crun binary (CAPSULE_CRUN). */
  crunPath: string;
  /** crun's state dir (--root). */
  crunRoot: string;
  /** Where bundles are written: <bundlesDir>/<id>/config.json. */
  bundlesDir: string;
  log: (message: string, meta?: Record<string, unknown>) => void;
  /** How long CreateContainer waits for the rootfs to show up in the shared dir (default 5 s). */
  rootfsWaitMs?: number;
  /** Scratch dir of warmUp() (default /run/capsule/warm-up) and the busybox it copies there. */
  warmUpDir?: string;
  warmUpBusybox?: string;
  /** Where cgroup2 is mounted (default /sys/fs/cgroup): containers' cgroups, OOM kills, stats. */
  cgroupRoot?: string;
  /**
   * The agent protected itself from the OOM killer (AGENT_OOM_SCORE_ADJ, main.ts): crun must then
   * start at 0, or the container inherits -1000 (crun does not write the spec's oomScoreAdj of 0)
   * and a container that exhausts the VM's memory leaves the kernel nothing to kill but panics.
   */
  resetOomScoreAdj?: boolean;
  /** capsule-console (terminals); default: next to crun when crunPath is absolute, else on PATH. */
  consolePath?: string;
  /** Where console sockets are made (short paths: sun_path); default <bundlesDir>/../console. */
  consoleSocketDir?: string;
  /** capsule-exec (execs without a terminal); default: next to crun when crunPath is absolute, else on PATH. */
  execHelperPath?: string;
}

/** What an exec is started in, and with. */
interface ExecTarget {
  containerId: string;
  /** The container's init, in the agent's pid namespace. */
  initPid: number;
  /** /proc/PID/ns names for capsule-exec; undefined: the exec goes through crun. */
  helperNamespaces: string[] | undefined;
  process: ExecProcessSpec;
}

/** A terminal's size; 0 leaves it as the runtime made it. */
export interface TerminalSize {
  rows: number;
  cols: number;
}

/**
 * An agent helper (capsule-console, capsule-exec, capsule-setclock): next to crun on the agent
 * disk (guest/assets/build.sh) when `crunPath` is absolute, else on PATH.
 */
export function besideCrun(crunPath: string, helper: string): string {
  return path.isAbsolute(crunPath) ? path.join(path.dirname(crunPath), helper) : helper;
}

function execHelperPathOf(opts: ContainerManagerOptions): string {
  return opts.execHelperPath || besideCrun(opts.crunPath, 'capsule-exec');
}

function consolePathOf(opts: ContainerManagerOptions): string {
  return opts.consolePath || besideCrun(opts.crunPath, 'capsule-console');
}

/**
 * Spawns crun with `globalArgs` then `command` (run|exec) and `commandArgs`. A process with a
 * terminal runs under capsule-console, which binds the console socket crun is told about and gets
 * a 4th pipe (fd 3) for resizes; its exit status is crun's. Resolves the socket path to remove.
 */
async function spawnRuntime(
  opts: ContainerManagerOptions,
  globalArgs: string[],
  command: 'run' | 'exec',
  commandArgs: string[],
  options: { cwd: string; openStdin: boolean; terminal?: TerminalSize },
): Promise<{ child: ChildProcess; consoleSocket?: string }> {
  const stdin = options.openStdin ? 'pipe' : 'ignore';
  if (!options.terminal) {
    const child = spawnOutsideOomProtection(opts, () =>
      spawn(opts.crunPath, [...globalArgs, command, ...commandArgs], {
        stdio: [stdin, 'pipe', 'pipe'],
        cwd: options.cwd,
      }),
    );
    return { child };
  }
  const dir = opts.consoleSocketDir ?? path.join(path.dirname(opts.bundlesDir), 'console');
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const socket = path.join(dir, `${randomBytes(8).toString('hex')}.sock`);
  const crunArgs = [...globalArgs, command, '--console-socket', socket, ...commandArgs];
  const { rows, cols } = options.terminal;
  const child = spawnOutsideOomProtection(opts, () =>
    spawn(consolePathOf(opts), [socket, String(rows), String(cols), '--', opts.crunPath, ...crunArgs], {
      stdio: [stdin, 'pipe', 'pipe', 'pipe'],
      cwd: options.cwd,
    }),
  );
  return { child, consoleSocket: socket };
}

const OOM_SCORE_ADJ = '/proc/self/oom_score_adj';
/** What the agent sets for itself in the guest (main.ts) and restores after each spawn. */
export const AGENT_OOM_SCORE_ADJ = -1000;

/**
 * Runs `spawnChild` with the agent's oom_score_adj at 0 (see resetOomScoreAdj). The child copies
 * the value when it is forked, and libuv forks inside spawn() itself, synchronously: writing 0
 * before and -1000 after is enough, and costs no extra process. (A `sh -c 'echo 0 >…; exec crun'`
 * wrapper did the same for one more fork+exec — about 100 ms of every exec under TCG.)
 */
function spawnOutsideOomProtection(
  opts: ContainerManagerOptions,
  spawnChild: () => ChildProcess,
): ChildProcess {
  if (!opts.resetOomScoreAdj) return spawnChild();
  writeFileSync(OOM_SCORE_ADJ, '0');
  try {
    return spawnChild();
  } finally {
    writeFileSync(OOM_SCORE_ADJ, String(AGENT_OOM_SCORE_ADJ));
  }
}

/** The id of warmUp()'s throwaway container; no Docker id looks like it. */
export const WARM_UP_ID = 'capsule-warm-up';

/** The host mounted the rootfs just before CreateContainer; virtiofs shows it within a second. */
const ROOTFS_WAIT_MS = 5000;

export interface CreateContainerParams {
  containerId: string;
  ociSpecJson: string;
  rootfsGuestPath: string;
  user: string;
  openStdin: boolean;
  workingDir: string;
  /** Set when the spec's process.terminal is true: the pty's initial size. */
  terminal?: TerminalSize;
}

export interface ExecParams {
  containerId: string;
  execId: string;
  /** argv; env complete (the host merged the container's); "" cwd = the container's. */
  args: string[];
  env: string[];
  workingDir: string;
  /** Docker's User string ("" = the container's user), resolved as for CreateContainer. */
  user: string;
  openStdin: boolean;
  tty: boolean;
  /** The pty's initial size (tty only). */
  rows?: number;
  cols?: number;
}

export interface ExitStatus {
  exitCode: number;
  oomKilled: boolean;
}

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

type Outcome = { kind: 'exited'; status: ExitStatus } | { kind: 'failed'; error: AgentError };

interface OciSpecShape {
  process?: {
    args?: unknown;
    env?: unknown;
    cwd?: unknown;
    terminal?: unknown;
    user?: Record<string, unknown>;
  };
  root?: Record<string, unknown>;
  linux?: { cgroupsPath?: unknown; namespaces?: unknown };
}

/** The spec's namespaces as capsule-exec joins them, or undefined when it cannot (exec-helper.ts). */
function namespacesOf(spec: OciSpecShape): string[] | undefined {
  const list = spec.linux?.namespaces;
  if (!Array.isArray(list)) return undefined;
  const types: string[] = [];
  for (const ns of list as unknown[]) {
    const entry = ns as { type?: unknown; path?: unknown } | null;
    // A namespace joined by path is one crun sets up from outside the container: leave it to crun.
    if (typeof entry?.type !== 'string' || entry.path !== undefined) return undefined;
    types.push(entry.type);
  }
  return helperNamespaces(types);
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid from a recycled one. */
async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

/**
 * Waits for crun's pid file until it appears (started) or crun exits without it (failed). inotify
 * on its directory wakes the check as crun writes it (a poll with backoff cost up to 25 ms of
 * every exec, and its wake-ups competed with crun for the VM's CPU); a slow poll covers an event
 * missed, or a directory that cannot be watched.
 */
async function waitForPidFile(pidFile: string, exit: Promise<unknown>): Promise<number | undefined> {
  let crunGone = false;
  void exit.then(() => (crunGone = true));
  let wake: () => void = () => undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(path.dirname(pidFile), () => wake());
    watcher.on('error', () => undefined);
  } catch {
    // polling alone
  }
  try {
    for (;;) {
      const finalCheck = crunGone;
      const woken = new Promise<void>((resolve) => (wake = resolve));
      try {
        const pid = Number.parseInt(await fs.readFile(pidFile, 'utf8'), 10);
        if (Number.isInteger(pid) && pid > 0) return pid;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      if (finalCheck) return undefined;
      await Promise.race([sleep(watcher ? 100 : 10), exit, woken]);
    }
  } finally {
    watcher?.close();
  }
}

/** crun's exit as Docker reports it: the status, or 128 + the signal that ended it. */
function crunExit(child: ChildProcess): Promise<ExitStatus | Error> {
  return new Promise<ExitStatus | Error>((resolve) => {
    child.once('error', (err) => resolve(err));
    child.once('exit', (code, signal) => {
      const signo = signal ? (osConstants.signals[signal] ?? 0) : 0;
      resolve({ exitCode: code ?? 128 + signo, oomKilled: false });
    });
  });
}

/** The last error crun logged (--log-format=json), or a fallback naming its status. */
async function lastCrunError(logFile: string, crunStatus: number): Promise<string> {
  let logged: string[] = [];
  try {
    logged = crunLogErrors(await fs.readFile(logFile, 'utf8'));
  } catch {
    // no log: fall back to the status below
  }
  return logged[logged.length - 1] ?? `crun exited with status ${crunStatus} before starting the process`;
}

/** Sends `signo` to `pid` unless it is gone or recycled (its start time changed). */
async function signalPid(pid: number, startTime: string | undefined, signo: number): Promise<void> {
  if ((await processStartTime(pid)) !== startTime) return;
  try {
    process.kill(pid, signo);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

function checkSize(rows: number, cols: number): void {
  if (![rows, cols].every((n) => Number.isInteger(n) && n >= 0 && n <= 65535)) {
    throw new AgentError('InvalidArgument', `invalid terminal size: ${rows}x${cols}`);
  }
}

function checkSignal(signo: number): void {
  if (!Number.isInteger(signo) || signo < 1 || signo > 64) {
    throw new AgentError('InvalidArgument', `invalid signal: ${signo}`);
  }
}

/** Reads the oom_kill count of a cgroup's memory.events (0 when there is none yet). */
export async function oomKillCount(memoryEventsFile: string): Promise<number> {
  try {
    const text = await fs.readFile(memoryEventsFile, 'utf8');
    const m = /^oom_kill (\d+)$/m.exec(text);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * One `docker exec` process: `crun exec --process <process.json>` in a running container. As with
 * `crun run`, crun stays the parent of the process and exits with its status, and writes its
 * --pid-file only once the process runs; without it the exec failed to start, and the --log says
 * why. Its stdio works as the init's (ProcessIO).
 */
class Exec {
  readonly io: ProcessIO;
  private pid?: number;
  private startTime?: string;
  private readonly outcome = deferred<ExitStatus>();
  exited = false;
  /** WaitProcess has reported the status: with the output finished, the exec can be forgotten. */
  waited = false;

  constructor(
    readonly id: string,
    readonly dir: string,
    openStdin: boolean,
    private readonly executable: string,
    private readonly opts: ContainerManagerOptions,
    private readonly terminal?: TerminalSize,
  ) {
    this.io = new ProcessIO(`exec ${id}`, openStdin, opts.log);
  }

  get processPid(): number | undefined {
    return this.pid;
  }

  /**
   * Starts the process; resolves with its pid, or rejects with dockerd's message and status 126.
   * Without a terminal, and when capsule-exec can join the container's namespaces, it starts the
   * process (exec-helper.ts); else `crun exec` does, with the process.json written in the exec's dir.
   */
  async start(target: ExecTarget): Promise<number> {
    const pid =
      this.terminal === undefined && target.helperNamespaces !== undefined
        ? await this.startWithHelper(target.initPid, target.helperNamespaces, target.process)
        : await this.startWithCrun(target.containerId, target.process);
    this.pid = pid;
    this.startTime = await processStartTime(pid);
    return pid;
  }

  private async startWithHelper(
    initPid: number,
    namespaces: string[],
    proc: ExecProcessSpec,
  ): Promise<number> {
    const argv = execHelperArgs(initPid, namespaces, proc);
    const helperPath = execHelperPathOf(this.opts);
    const child = spawnOutsideOomProtection(this.opts, () =>
      spawnExecHelper(helperPath, argv, this.io.openStdin),
    );
    const exit = crunExit(child);
    this.io.wire(child, false);
    const status = await readHelperStatus(child);
    if (status === undefined || 'error' in status) {
      const result = await exit;
      this.fail();
      if (result instanceof Error) {
        throw new AgentError('Internal', `cannot run ${helperPath}: ${result.message}`, 126);
      }
      if (status === undefined) {
        throw new AgentError(
          'Internal',
          `${helperPath} exited with status ${result.exitCode} before starting the process`,
          126,
        );
      }
      // Worded as crun's own errors: the same translation into dockerd's message applies.
      const failure = translateExecFailure(status.error, this.executable);
      throw new AgentError(failure.invalidConfig ? 'FailedPrecondition' : 'Unknown', failure.message, 126);
    }
    this.followExit(exit);
    return status.pid;
  }

  private async startWithCrun(containerId: string, proc: ExecProcessSpec): Promise<number> {
    await fs.writeFile(path.join(this.dir, 'process.json'), JSON.stringify(proc), { mode: 0o600 });
    const pidFile = path.join(this.dir, 'pid');
    const logFile = path.join(this.dir, 'crun.log');
    const { child, consoleSocket } = await spawnRuntime(
      this.opts,
      [`--log=file:${logFile}`, '--log-format=json', '--root', this.opts.crunRoot],
      'exec',
      ['--process', path.join(this.dir, 'process.json'), '--pid-file', pidFile, containerId],
      { cwd: this.dir, openStdin: this.io.openStdin, terminal: this.terminal },
    );
    const exit = crunExit(child);
    if (consoleSocket) void exit.then(() => fs.rm(consoleSocket, { force: true }).catch(() => undefined));
    this.io.wire(child, this.terminal !== undefined);
    let pid: number | undefined;
    try {
      pid = await waitForPidFile(pidFile, exit);
    } catch (err) {
      child.kill('SIGKILL');
      await exit;
      this.fail();
      throw new AgentError(
        'Internal',
        `cannot follow the start of exec ${this.id}: ${(err as Error).message}`,
        126,
      );
    }
    if (pid === undefined) {
      const status = await exit;
      this.fail();
      if (status instanceof Error) {
        throw new AgentError(
          'Internal',
          `cannot run OCI runtime ${this.opts.crunPath}: ${status.message}`,
          126,
        );
      }
      // What crun wrote to the process's stderr is its own error: dockerd shows only the message.
      const failure = translateExecFailure(await lastCrunError(logFile, status.exitCode), this.executable);
      throw new AgentError(failure.invalidConfig ? 'FailedPrecondition' : 'Unknown', failure.message, 126);
    }
    this.followExit(exit);
    return pid;
  }

  private followExit(exit: Promise<ExitStatus | Error>): void {
    void exit.then((status) => {
      const result: ExitStatus = status instanceof Error ? { exitCode: 126, oomKilled: false } : status;
      this.opts.log('exec exited', { exec: this.id, exitCode: result.exitCode });
      this.exited = true;
      this.io.markExited();
      this.outcome.resolve(result);
    });
  }

  private fail() {
    this.exited = true;
    this.io.discard();
  }

  async signal(signo: number): Promise<void> {
    checkSignal(signo);
    if (this.exited || this.pid === undefined) return;
    await signalPid(this.pid, this.startTime, signo);
  }

  async wait(): Promise<ExitStatus> {
    const status = await this.outcome.promise;
    this.waited = true;
    return status;
  }

  kill(): void {
    if (this.pid !== undefined && !this.exited) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

class Container {
  state: 'created' | 'starting' | 'running' | 'stopped' = 'created';
  private child?: ChildProcess;
  private initPid?: number;
  private initStartTime?: string;
  private readonly outcome = deferred<Outcome>();
  private exited = false;
  readonly io: ProcessIO;
  readonly execs = new Map<string, Exec>();

  constructor(
    readonly id: string,
    readonly bundleDir: string,
    readonly openStdin: boolean,
    private readonly executable: string,
    private readonly opts: ContainerManagerOptions,
    /** The rootfs in the guest, and the process of config.json (the base of every exec's). */
    readonly rootfs: string,
    readonly baseProcess: Record<string, unknown>,
    /** The container's cgroup dir (crun's cgroupsPath under the cgroup2 mount). */
    readonly cgroupDir: string,
    /** The namespaces an exec joins, for capsule-exec (undefined: execs go through crun). */
    readonly helperNamespaces: string[] | undefined,
    private readonly terminal?: TerminalSize,
  ) {
    this.io = new ProcessIO(`container ${id}`, openStdin, opts.log);
  }

  /** The init's pid while the container runs. */
  get runningInitPid(): number | undefined {
    return this.state === 'running' && !this.exited ? this.initPid : undefined;
  }

  private get pidFile() {
    return path.join(this.bundleDir, 'init.pid');
  }
  private get logFile() {
    return path.join(this.bundleDir, 'crun.log');
  }
  /**
   * The parent of the container's cgroup counts OOM kills of the container's processes (memory.events
   * is hierarchical) and, unlike the container's own, survives `crun run` removing that cgroup.
   */
  private get memoryEventsFile() {
    return path.join(path.dirname(this.cgroupDir), 'memory.events');
  }

  async start(): Promise<void> {
    if (this.state !== 'created') {
      throw new AgentError('FailedPrecondition', `container ${this.id} has already been started`);
    }
    this.state = 'starting';
    await fs.rm(this.pidFile, { force: true });
    await fs.rm(this.logFile, { force: true });
    const oomBefore = await oomKillCount(this.memoryEventsFile);
    const { child, consoleSocket } = await spawnRuntime(
      this.opts,
      [`--log=file:${this.logFile}`, '--log-format=json', '--root', this.opts.crunRoot],
      'run',
      ['--bundle', this.bundleDir, '--pid-file', this.pidFile, this.id],
      { cwd: this.bundleDir, openStdin: this.openStdin, terminal: this.terminal },
    );
    this.child = child;
    const exit = crunExit(child);
    if (consoleSocket) void exit.then(() => fs.rm(consoleSocket, { force: true }).catch(() => undefined));
    this.io.wire(child, this.terminal !== undefined);

    let pid: number | undefined;
    try {
      pid = await waitForPidFile(this.pidFile, exit);
    } catch (err) {
      // Cannot tell whether it started: make sure it did not, and report the agent's failure.
      child.kill('SIGKILL');
      await exit;
      const error = new AgentError(
        'Internal',
        `cannot follow the start of ${this.id}: ${(err as Error).message}`,
        128,
      );
      this.state = 'stopped';
      this.exited = true;
      this.outcome.resolve({ kind: 'failed', error });
      this.io.markExited();
      throw error;
    }
    if (pid === undefined) {
      const status = await exit;
      let error: AgentError;
      if (status instanceof Error) {
        error = new AgentError(
          'Internal',
          `cannot run OCI runtime ${this.opts.crunPath}: ${status.message}`,
          128,
        );
        this.io.discard();
      } else {
        error = await this.startFailure(status.exitCode);
      }
      this.state = 'stopped';
      this.opts.log('container failed to start', { id: this.id, error: error.message });
      this.exited = true;
      this.outcome.resolve({ kind: 'failed', error });
      this.io.markExited();
      throw error;
    }
    this.initPid = pid;
    this.initStartTime = await processStartTime(pid);
    this.state = 'running';
    void exit.then(async (status) => {
      const result: ExitStatus = status instanceof Error ? { exitCode: 128, oomKilled: false } : status;
      // Docker's OOMKilled: the OOM killer ended a process of this container during the run.
      result.oomKilled = (await oomKillCount(this.memoryEventsFile)) > oomBefore;
      this.state = 'stopped';
      this.exited = true;
      this.opts.log('container exited', {
        id: this.id,
        exitCode: result.exitCode,
        oomKilled: result.oomKilled,
      });
      this.outcome.resolve({ kind: 'exited', status: result });
      this.io.markExited();
    });
  }

  private async startFailure(crunStatus: number): Promise<AgentError> {
    const failure = translateStartFailure(await lastCrunError(this.logFile, crunStatus), this.executable);
    return new AgentError(
      failure.invalidConfig ? 'FailedPrecondition' : 'Unknown',
      failure.message,
      failure.exitCode,
    );
  }

  attachOutput(sink: OutputSink): () => void {
    return this.io.attachOutput(sink);
  }

  // ---- stdin, signals, exit -----------------------------------------------------------------

  private checkStarted(): void {
    if (this.state === 'created' || this.state === 'starting') {
      throw new AgentError('FailedPrecondition', `container ${this.id} is not running`);
    }
  }

  async writeStdin(data: Buffer): Promise<void> {
    if (this.openStdin) this.checkStarted();
    await this.io.writeStdin(data);
  }

  closeStdin(): void {
    if (!this.openStdin) return;
    this.checkStarted();
    this.io.closeStdin();
  }

  async signal(signo: number): Promise<void> {
    checkSignal(signo);
    this.checkStarted();
    const pid = this.initPid;
    if (this.exited || pid === undefined) return;
    // crun stays the parent of the init process until it has reaped it, so while crun runs the pid
    // is the init's; the start time guards against the pid having been recycled since.
    await signalPid(pid, this.initStartTime, signo);
  }

  async wait(): Promise<ExitStatus> {
    const outcome = await this.outcome.promise;
    if (outcome.kind === 'failed') throw outcome.error;
    return outcome.status;
  }

  /** Kills the container's init at once (agent shutdown). */
  kill(): void {
    for (const exec of this.execs.values()) exec.kill();
    if (this.initPid !== undefined && !this.exited) {
      try {
        process.kill(this.initPid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  done(): Promise<unknown> {
    return this.outcome.promise;
  }
}

/** Resolves Docker's User string against the rootfs's /etc/passwd and /etc/group (read in the root). */
async function resolveUserInRoot(rootfs: string, user: string): Promise<ResolvedUser> {
  // Both at once: each read is a few virtiofs round trips to the host, on every exec.
  const [passwd, group] = await Promise.all([
    readFileInRoot(rootfs, '/etc/passwd'),
    readFileInRoot(rootfs, '/etc/group'),
  ]);
  return resolveUser(
    user,
    passwd === undefined ? undefined : parsePasswd(passwd),
    group === undefined ? undefined : parseGroup(group),
  );
}

export class ContainerManager {
  private readonly containers = new Map<string, Container | 'creating'>();

  constructor(private readonly opts: ContainerManagerOptions) {}

  async create(params: CreateContainerParams): Promise<void> {
    const id = params.containerId;
    if (!CONTAINER_ID.test(id))
      throw new AgentError('InvalidArgument', `invalid container id: ${JSON.stringify(id)}`);
    if (this.containers.has(id)) throw new AgentError('AlreadyExists', `container ${id} already exists`);
    this.containers.set(id, 'creating');
    try {
      this.containers.set(id, await this.prepare(params));
    } catch (err) {
      this.containers.delete(id);
      throw err;
    }
  }

  private async prepare(params: CreateContainerParams): Promise<Container> {
    const id = params.containerId;
    let spec: OciSpecShape;
    try {
      spec = JSON.parse(params.ociSpecJson) as OciSpecShape;
    } catch (err) {
      throw new AgentError('InvalidArgument', `invalid OCI spec: ${(err as Error).message}`);
    }
    const proc = spec?.process;
    if (typeof proc !== 'object' || proc === null)
      throw new AgentError('InvalidArgument', 'OCI spec has no process');
    const args = proc.args;
    if (!Array.isArray(args) || args.length === 0 || !args.every((a) => typeof a === 'string')) {
      throw new AgentError('InvalidArgument', 'OCI spec process.args must be a non-empty list of strings');
    }
    if (proc.terminal !== undefined && typeof proc.terminal !== 'boolean')
      throw new AgentError('InvalidArgument', 'OCI spec process.terminal must be a boolean');
    const terminal = proc.terminal === true ? (params.terminal ?? { rows: 0, cols: 0 }) : undefined;
    if (terminal) checkSize(terminal.rows, terminal.cols);
    const env = Array.isArray(proc.env) ? proc.env.filter((e): e is string => typeof e === 'string') : [];

    const rootfs = params.rootfsGuestPath;
    if (!path.isAbsolute(rootfs)) {
      throw new AgentError('InvalidArgument', `rootfs path must be absolute: ${JSON.stringify(rootfs)}`);
    }
    if (!(await waitForRootfs(rootfs, this.opts.rootfsWaitMs ?? ROOTFS_WAIT_MS))) {
      const rootStat = await fs.stat(rootfs).catch(() => undefined);
      throw new AgentError(
        'FailedPrecondition',
        rootStat?.isDirectory()
          ? `rootfs ${rootfs} is still empty after ${this.opts.rootfsWaitMs ?? ROOTFS_WAIT_MS} ms`
          : `rootfs ${rootfs} is not a directory`,
      );
    }

    let user;
    try {
      user = await resolveUserInRoot(rootfs, params.user);
    } catch (err) {
      if (err instanceof UserLookupError) throw new AgentError('Unknown', err.message, 128);
      throw err;
    }
    proc.user = { ...(proc.user ?? {}), uid: user.uid, gid: user.gid, additionalGids: user.additionalGids };
    // runc sets HOME from the user's passwd entry ("/" without one); crun leaves it empty then.
    if (!env.some((e) => e.startsWith('HOME='))) env.push(`HOME=${user.home}`);
    proc.env = env;

    if (params.workingDir !== '') {
      if (!path.posix.isAbsolute(params.workingDir)) {
        throw new AgentError(
          'InvalidArgument',
          `the working directory '${params.workingDir}' is invalid, it needs to be an absolute path`,
        );
      }
      try {
        await mkdirAllInRoot(rootfs, params.workingDir);
      } catch (err) {
        throw new AgentError('Unknown', (err as Error).message, 128);
      }
      proc.cwd = path.posix.normalize(params.workingDir);
    } else if (typeof proc.cwd !== 'string' || proc.cwd === '') {
      proc.cwd = '/';
    }
    spec.root = { ...(spec.root ?? {}), path: rootfs };

    const bundleDir = path.join(this.opts.bundlesDir, id);
    await fs.rm(bundleDir, { recursive: true, force: true });
    await fs.mkdir(bundleDir, { recursive: true, mode: 0o700 });
    await fs.writeFile(path.join(bundleDir, 'config.json'), JSON.stringify(spec), { mode: 0o600 });
    this.opts.log('container created', { id, user: params.user, uid: user.uid });
    const cgroupsPath = typeof spec.linux?.cgroupsPath === 'string' ? spec.linux.cgroupsPath : `/${id}`;
    return new Container(
      id,
      bundleDir,
      params.openStdin,
      args[0] as string,
      this.opts,
      rootfs,
      { ...proc, user: { ...proc.user, username: params.user } },
      path.join(this.cgroupRoot, cgroupsPath),
      namespacesOf(spec),
      terminal,
    );
  }

  get cgroupRoot(): string {
    return this.opts.cgroupRoot ?? '/sys/fs/cgroup';
  }

  private container(containerId: string): Container {
    const c = this.containers.get(containerId);
    if (c === undefined || c === 'creating')
      throw new AgentError('NotFound', `no such container: ${containerId}`);
    return c;
  }

  private get(containerId: string, execId: string): Container {
    const c = this.container(containerId);
    if (execId !== '')
      throw new AgentError('NotFound', `no such exec: ${execId} in container ${containerId}`);
    return c;
  }

  private execOf(containerId: string, execId: string): Exec {
    const exec = this.container(containerId).execs.get(execId);
    if (!exec) throw new AgentError('NotFound', `no such exec: ${execId} in container ${containerId}`);
    return exec;
  }

  /** The container's rootfs in the guest and its cgroup dir (top, stats). */
  describe(containerId: string): { rootfs: string; cgroupDir: string; running: boolean } {
    const c = this.container(containerId);
    return { rootfs: c.rootfs, cgroupDir: c.cgroupDir, running: c.state === 'running' };
  }

  start(containerId: string): Promise<void> {
    return this.get(containerId, '').start();
  }
  attachOutput(containerId: string, execId: string, sink: OutputSink): () => void {
    if (execId !== '') {
      const exec = this.execOf(containerId, execId);
      const detach = exec.io.attachOutput(sink);
      return detach;
    }
    return this.get(containerId, execId).attachOutput(sink);
  }
  writeStdin(containerId: string, execId: string, data: Buffer): Promise<void> {
    if (execId !== '') return this.execOf(containerId, execId).io.writeStdin(data);
    return this.get(containerId, execId).writeStdin(data);
  }
  /** Resizes the process's terminal; a no-op for a process without one, or that has exited. */
  resize(containerId: string, execId: string, rows: number, cols: number): void {
    checkSize(rows, cols);
    if (execId !== '') return this.execOf(containerId, execId).io.resize(rows, cols);
    this.get(containerId, execId).io.resize(rows, cols);
  }
  closeStdin(containerId: string, execId: string): void {
    if (execId !== '') return this.execOf(containerId, execId).io.closeStdin();
    this.get(containerId, execId).closeStdin();
  }
  signal(containerId: string, execId: string, signo: number): Promise<void> {
    if (execId !== '') return this.execOf(containerId, execId).signal(signo);
    return this.get(containerId, execId).signal(signo);
  }
  async wait(containerId: string, execId: string): Promise<ExitStatus> {
    if (execId === '') return this.get(containerId, execId).wait();
    const container = this.container(containerId);
    const exec = this.execOf(containerId, execId);
    const status = await exec.wait();
    this.forgetWhenDone(container, exec);
    return status;
  }

  /** An exec whose status was reported and output read is forgotten (its dir removed). */
  private forgetWhenDone(container: Container, exec: Exec): void {
    if (!exec.waited || !exec.io.finished) return;
    if (container.execs.get(exec.id) === exec) container.execs.delete(exec.id);
    void fs.rm(exec.dir, { recursive: true, force: true }).catch(() => undefined);
  }

  /** Output of an exec ended: forget it once waited too. */
  outputFinished(containerId: string, execId: string): void {
    if (execId === '') return;
    const c = this.containers.get(containerId);
    if (c === undefined || c === 'creating') return;
    const exec = c.execs.get(execId);
    if (exec) this.forgetWhenDone(c, exec);
  }

  /**
   * Runs an extra process in a running container (docker exec): its process.json is the
   * container's process with the exec's args, env, cwd and user (resolved in the guest as for
   * CreateContainer; HOME from passwd when env has none). Resolves with its pid once it runs; a
   * failure to start carries dockerd's message and exit status 126.
   */
  async exec(params: ExecParams): Promise<number> {
    const container = this.container(params.containerId);
    const execId = params.execId;
    if (!CONTAINER_ID.test(execId))
      throw new AgentError('InvalidArgument', `invalid exec id: ${JSON.stringify(execId)}`);
    if (container.execs.has(execId)) throw new AgentError('AlreadyExists', `exec ${execId} already exists`);
    if (container.state !== 'running')
      throw new AgentError('FailedPrecondition', `container ${container.id} is not running`, 126);
    const terminal = params.tty ? { rows: params.rows ?? 0, cols: params.cols ?? 0 } : undefined;
    if (terminal) checkSize(terminal.rows, terminal.cols);
    if (params.args.length === 0 || params.args.some((a) => typeof a !== 'string'))
      throw new AgentError('InvalidArgument', 'No exec command specified');

    const base = container.baseProcess;
    const userString =
      params.user !== '' ? params.user : String((base.user as { username?: unknown }).username ?? '');
    let user: ResolvedUser;
    try {
      user = await resolveUserInRoot(container.rootfs, userString);
    } catch (err) {
      if (err instanceof UserLookupError) throw new AgentError('Unknown', err.message, 126);
      throw err;
    }
    const env = [...params.env];
    if (!env.some((e) => e.startsWith('HOME='))) env.push(`HOME=${user.home}`);
    let cwd = params.workingDir !== '' ? params.workingDir : String(base.cwd ?? '/');
    if (!path.posix.isAbsolute(cwd)) {
      throw new AgentError(
        'InvalidArgument',
        `the working directory '${cwd}' is invalid, it needs to be an absolute path`,
        126,
      );
    }
    cwd = path.posix.normalize(cwd);
    const processSpec = {
      ...base,
      terminal: params.tty,
      args: params.args,
      env,
      cwd,
      user: { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids },
    };

    const dir = path.join(container.bundleDir, 'execs', execId);
    // Exec ids are unique (AlreadyExists above): the dir is new, unless a start failed midway.
    await fs.mkdir(dir, { mode: 0o700 }).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST' && err.code !== 'ENOENT') throw err;
      await fs.rm(dir, { recursive: true, force: true });
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    });
    const exec = new Exec(execId, dir, params.openStdin, params.args[0] as string, this.opts, terminal);
    container.execs.set(execId, exec);
    try {
      const initPid = container.runningInitPid;
      if (initPid === undefined) {
        throw new AgentError('FailedPrecondition', `container ${container.id} is not running`, 126);
      }
      const pid = await exec.start({
        containerId: container.id,
        initPid,
        helperNamespaces: container.helperNamespaces,
        process: processSpec as ExecProcessSpec,
      });
      this.opts.log('exec started', { id: container.id, exec: execId, pid });
      return pid;
    } catch (err) {
      container.execs.delete(execId);
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Runs `/bin/true` in a throwaway container through create, output, start and wait, as for a
   * real one, then forgets it and removes its bundle and rootfs (crun removed its state and cgroup
   * when `crun run` ended). Its rootfs is a tmpfs dir holding a copy of the guest's busybox: nothing
   * of it is visible to a later container. `ociSpecJson` is a spec as for CreateContainer; its
   * process is replaced.
   */
  async warmUp(ociSpecJson: string): Promise<void> {
    const dir = this.opts.warmUpDir ?? '/run/capsule/warm-up';
    const rootfs = path.join(dir, 'rootfs');
    let spec: OciSpecShape;
    try {
      spec = JSON.parse(ociSpecJson) as OciSpecShape;
    } catch (err) {
      throw new AgentError('InvalidArgument', `invalid OCI spec: ${(err as Error).message}`);
    }
    spec.process = { ...(spec.process ?? {}), args: ['/bin/true'], env: ['PATH=/bin'], terminal: false };
    await fs.rm(dir, { recursive: true, force: true });
    try {
      await fs.mkdir(path.join(rootfs, 'bin'), { recursive: true, mode: 0o755 });
      await fs.copyFile(this.opts.warmUpBusybox ?? '/bin/busybox', path.join(rootfs, 'bin', 'busybox'));
      await fs.chmod(path.join(rootfs, 'bin', 'busybox'), 0o755);
      await fs.symlink('busybox', path.join(rootfs, 'bin', 'true'));
      await this.create({
        containerId: WARM_UP_ID,
        ociSpecJson: JSON.stringify(spec),
        rootfsGuestPath: rootfs,
        user: '',
        openStdin: false,
        workingDir: '',
      });
      const container = this.get(WARM_UP_ID, '');
      try {
        const drained = new Promise<void>((resolve) =>
          container.attachOutput({ write: () => true, onceDrain: () => undefined, end: resolve }),
        );
        await container.start();
        const status = await container.wait();
        await drained;
        if (status.exitCode !== 0) {
          throw new AgentError('Internal', `the warm-up container exited with status ${status.exitCode}`);
        }
      } finally {
        this.containers.delete(WARM_UP_ID);
        await fs.rm(container.bundleDir, { recursive: true, force: true });
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  /** SIGKILLs every running container and waits (bounded) for crun to reap them. */
  async killAll(timeoutMs = 5000): Promise<void> {
    const running = [...this.containers.values()].filter((c): c is Container => c !== 'creating');
    for (const c of running) c.kill();
    await Promise.race([
      Promise.all(running.map((c) => (c.state === 'created' ? undefined : c.done()))),
      sleep(timeoutMs),
    ]);
  }
}
