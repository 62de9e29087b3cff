/**
 * Containers inside the guest: OCI bundles handed to crun, their init process, its stdio and exit.
 *
 * The agent never re-implements what the OCI runtime does (namespaces, USER, capabilities, mounts):
 * it writes config.json, runs `crun run`, and watches. `crun run` stays the parent of the container's
 * init for its whole life, which is what gives the agent the exit status (Node cannot reap a
 * process it did not spawn). Whether the container *started* is told apart from "started, then
 * failed" by crun's --pid-file: crun writes it only once the container is created and its
 * executable resolved; a `crun run` that exits without having written it failed to start, and its
 * --log file says why (see start-failure.ts).
 *
 * Output: stdout and stderr are pipes that the agent only moves while a reader (ReadOutput) is
 * attached and keeping up. Until then each pipe holds at most Node's first read (one high-water
 * mark, 16-64 KiB) plus the kernel pipe buffer, after which the process blocks: backpressure, never
 * loss. Chunks go to the reader in the order the agent reads them; order across the two pipes is
 * the order in which they became readable, as with Docker's two FIFOs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { AgentError } from './errors';
import { mkdirAllInRoot, readFileInRoot, waitForRootfs } from './rootfs-path';
import { crunLogErrors, translateStartFailure } from './start-failure';
import { parseGroup, parsePasswd, resolveUser, UserLookupError } from './users';

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
}

export interface ExitStatus {
  exitCode: number;
  oomKilled: boolean;
}

/** Where a process's output goes: a ReadOutput stream, behind an interface so tests can fake it. */
export interface OutputSink {
  /** Returns false when the producer must wait for the drain listener before writing more. */
  write(stream: 1 | 2, data: Buffer): boolean;
  onceDrain(listener: () => void): void;
  end(): void;
}

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

type Outcome = { kind: 'exited'; status: ExitStatus } | { kind: 'failed'; error: AgentError };

interface Pipe {
  stream: 1 | 2;
  readable: Readable;
  ended: boolean;
}

interface OciSpecShape {
  process?: {
    args?: unknown;
    env?: unknown;
    cwd?: unknown;
    terminal?: unknown;
    user?: Record<string, unknown>;
  };
  root?: Record<string, unknown>;
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

class Container {
  state: 'created' | 'starting' | 'running' | 'stopped' = 'created';
  private child?: ChildProcess;
  private initPid?: number;
  private initStartTime?: string;
  private readonly outcome = deferred<Outcome>();
  private exited = false;
  private pipes: Pipe[] = [];
  /** Chunks read but not yet taken by a reader (only ever non-empty across a reader change). */
  private pending: { stream: 1 | 2; data: Buffer }[] = [];
  private sink?: OutputSink;
  private outputDone = false;
  private stdinClosed = false;

  constructor(
    readonly id: string,
    readonly bundleDir: string,
    readonly openStdin: boolean,
    private readonly executable: string,
    private readonly opts: ContainerManagerOptions,
  ) {}

  private get pidFile() {
    return path.join(this.bundleDir, 'init.pid');
  }
  private get logFile() {
    return path.join(this.bundleDir, 'crun.log');
  }

  async start(): Promise<void> {
    if (this.state !== 'created') {
      throw new AgentError('FailedPrecondition', `container ${this.id} has already been started`);
    }
    this.state = 'starting';
    await fs.rm(this.pidFile, { force: true });
    await fs.rm(this.logFile, { force: true });
    const child = spawn(
      this.opts.crunPath,
      [
        `--log=file:${this.logFile}`,
        '--log-format=json',
        '--root',
        this.opts.crunRoot,
        'run',
        '--bundle',
        this.bundleDir,
        '--pid-file',
        this.pidFile,
        this.id,
      ],
      { stdio: [this.openStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], cwd: this.bundleDir },
    );
    this.child = child;
    const exit = new Promise<ExitStatus | Error>((resolve) => {
      child.once('error', (err) => resolve(err));
      child.once('exit', (code, signal) => {
        const signo = signal ? (osConstants.signals[signal] ?? 0) : 0;
        resolve({ exitCode: code ?? 128 + signo, oomKilled: false });
      });
    });
    child.stdin?.on('error', () => undefined); // EPIPE once the process is gone: nothing to do.
    this.wireOutput(child);

    let pid: number | undefined;
    try {
      pid = await this.waitForPidFile(exit);
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
      this.maybeFinishOutput();
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
        for (const p of this.pipes) {
          p.ended = true;
          p.readable.destroy();
        }
      } else {
        error = await this.startFailure(status.exitCode);
      }
      this.state = 'stopped';
      this.opts.log('container failed to start', { id: this.id, error: error.message });
      this.exited = true;
      this.outcome.resolve({ kind: 'failed', error });
      this.maybeFinishOutput();
      throw error;
    }
    this.initPid = pid;
    this.initStartTime = await processStartTime(pid);
    this.state = 'running';
    void exit.then((status) => {
      this.state = 'stopped';
      this.exited = true;
      const result: ExitStatus = status instanceof Error ? { exitCode: 128, oomKilled: false } : status;
      this.opts.log('container exited', { id: this.id, exitCode: result.exitCode });
      this.outcome.resolve({ kind: 'exited', status: result });
      this.maybeFinishOutput();
    });
  }

  /** Polls for crun's pid file until it appears (started) or crun exits without it (failed). */
  private async waitForPidFile(exit: Promise<unknown>): Promise<number | undefined> {
    let crunGone = false;
    void exit.then(() => (crunGone = true));
    let interval = 2;
    for (;;) {
      const finalCheck = crunGone;
      try {
        const pid = Number.parseInt(await fs.readFile(this.pidFile, 'utf8'), 10);
        if (Number.isInteger(pid) && pid > 0) return pid;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
      if (finalCheck) return undefined;
      await Promise.race([sleep(interval), exit]);
      interval = Math.min(interval * 2, 25);
    }
  }

  private async startFailure(crunStatus: number): Promise<AgentError> {
    let logged: string[] = [];
    try {
      logged = crunLogErrors(await fs.readFile(this.logFile, 'utf8'));
    } catch {
      // no log: fall back to the status below
    }
    const crunMessage =
      logged[logged.length - 1] ?? `crun exited with status ${crunStatus} before starting the process`;
    const failure = translateStartFailure(crunMessage, this.executable);
    return new AgentError(
      failure.invalidConfig ? 'FailedPrecondition' : 'Unknown',
      failure.message,
      failure.exitCode,
    );
  }

  // ---- output -------------------------------------------------------------------------------

  private wireOutput(child: ChildProcess) {
    const streams: [1 | 2, Readable | null][] = [
      [1, child.stdout],
      [2, child.stderr],
    ];
    for (const [stream, readable] of streams) {
      if (!readable) continue;
      const pipe: Pipe = { stream, readable, ended: false };
      // Paused before the 'data' listener goes on, so attaching it does not start the flow.
      readable.pause();
      readable.on('data', (data: Buffer) => this.deliver(stream, data));
      const finish = () => {
        if (pipe.ended) return;
        pipe.ended = true;
        this.maybeFinishOutput();
      };
      readable.on('end', finish);
      readable.on('error', (err) => {
        this.opts.log('output pipe error', { id: this.id, stream, error: err.message });
        finish();
      });
      this.pipes.push(pipe);
    }
    if (this.sink) this.resumeOutput();
  }

  private deliver(stream: 1 | 2, data: Buffer) {
    const sink = this.sink;
    if (!sink) {
      // Cannot happen while the pipes are paused without a reader; keep the data rather than lose it.
      this.pauseOutput();
      this.pending.push({ stream, data });
      return;
    }
    if (!sink.write(stream, data)) {
      this.pauseOutput();
      sink.onceDrain(() => {
        if (this.sink === sink) this.resumeOutput();
      });
    }
  }

  private pauseOutput() {
    for (const p of this.pipes) p.readable.pause();
  }

  private resumeOutput() {
    const sink = this.sink;
    if (!sink) return;
    while (this.pending.length > 0) {
      const chunk = this.pending.shift() as { stream: 1 | 2; data: Buffer };
      if (!sink.write(chunk.stream, chunk.data)) {
        sink.onceDrain(() => {
          if (this.sink === sink) this.resumeOutput();
        });
        return;
      }
    }
    for (const p of this.pipes) if (!p.ended) p.readable.resume();
    this.maybeFinishOutput();
  }

  private maybeFinishOutput() {
    if (this.outputDone || !this.exited || this.pending.length > 0) return;
    if (this.pipes.some((p) => !p.ended)) return;
    this.outputDone = true;
    const sink = this.sink;
    this.sink = undefined;
    sink?.end();
  }

  /** Attaches the one reader; returns the function that detaches it (reader gone). */
  attachOutput(sink: OutputSink): () => void {
    if (this.sink) {
      throw new AgentError('AlreadyExists', `the output of container ${this.id} is already being read`);
    }
    if (this.outputDone) {
      sink.end();
      return () => undefined;
    }
    this.sink = sink;
    this.resumeOutput();
    return () => {
      if (this.sink !== sink) return;
      this.sink = undefined;
      this.pauseOutput();
    };
  }

  // ---- stdin, signals, exit -----------------------------------------------------------------

  private stdin(): Writable | undefined {
    if (!this.openStdin) {
      throw new AgentError('FailedPrecondition', `container ${this.id} was not created with an open stdin`);
    }
    if (this.state === 'created' || this.state === 'starting') {
      throw new AgentError('FailedPrecondition', `container ${this.id} is not running`);
    }
    if (this.stdinClosed || this.exited) return undefined;
    return this.child?.stdin ?? undefined;
  }

  /** Resolves once the pipe took the data (backpressure: waits while the process does not read). */
  async writeStdin(data: Buffer): Promise<void> {
    const stdin = this.stdin();
    if (!stdin || stdin.destroyed || data.length === 0) return;
    await new Promise<void>((resolve) => {
      const onDone = () => {
        stdin.off('close', onDone);
        stdin.off('drain', onDone);
        resolve();
      };
      stdin.once('close', onDone); // process gone: the data is dropped, as a closed pipe would
      if (stdin.write(data)) onDone();
      else stdin.once('drain', onDone);
    });
  }

  /** Idempotent; a no-op for a process without an open stdin (it reads /dev/null). */
  closeStdin(): void {
    if (!this.openStdin) return;
    const stdin = this.stdin();
    this.stdinClosed = true;
    stdin?.end();
  }

  async signal(signo: number): Promise<void> {
    if (!Number.isInteger(signo) || signo < 1 || signo > 64) {
      throw new AgentError('InvalidArgument', `invalid signal: ${signo}`);
    }
    if (this.state === 'created' || this.state === 'starting') {
      throw new AgentError('FailedPrecondition', `container ${this.id} is not running`);
    }
    const pid = this.initPid;
    if (this.exited || pid === undefined) return;
    // crun stays the parent of the init process until it has reaped it, so while crun runs the pid
    // is the init's; the start time guards against the pid having been recycled since.
    if ((await processStartTime(pid)) !== this.initStartTime) return;
    try {
      process.kill(pid, signo);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  async wait(): Promise<ExitStatus> {
    const outcome = await this.outcome.promise;
    if (outcome.kind === 'failed') throw outcome.error;
    return outcome.status;
  }

  /** Kills the container's init at once (agent shutdown). */
  kill(): void {
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
    if (proc.terminal === true)
      throw new AgentError('InvalidArgument', 'terminal (tty) processes are not supported yet');
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
      const passwd = await readFileInRoot(rootfs, '/etc/passwd');
      const group = await readFileInRoot(rootfs, '/etc/group');
      user = resolveUser(
        params.user,
        passwd === undefined ? undefined : parsePasswd(passwd),
        group === undefined ? undefined : parseGroup(group),
      );
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
    return new Container(id, bundleDir, params.openStdin, args[0] as string, this.opts);
  }

  private get(containerId: string, execId: string): Container {
    const c = this.containers.get(containerId);
    if (c === undefined || c === 'creating')
      throw new AgentError('NotFound', `no such container: ${containerId}`);
    if (execId !== '')
      throw new AgentError('NotFound', `no such exec: ${execId} in container ${containerId}`);
    return c;
  }

  start(containerId: string): Promise<void> {
    return this.get(containerId, '').start();
  }
  attachOutput(containerId: string, execId: string, sink: OutputSink): () => void {
    return this.get(containerId, execId).attachOutput(sink);
  }
  writeStdin(containerId: string, execId: string, data: Buffer): Promise<void> {
    return this.get(containerId, execId).writeStdin(data);
  }
  closeStdin(containerId: string, execId: string): void {
    this.get(containerId, execId).closeStdin();
  }
  signal(containerId: string, execId: string, signo: number): Promise<void> {
    return this.get(containerId, execId).signal(signo);
  }
  wait(containerId: string, execId: string): Promise<ExitStatus> {
    return this.get(containerId, execId).wait();
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
