/**
 * Exec instances (`docker exec`): created against a running container, started once, inspected
 * for their exit code, as dockerd 20.10 keeps them (daemon/exec.go), measured against the reference
 * dockerd on this machine:
 *
 * - create needs a running container: 409 `Container <id> is not running` (paused and restarting
 *   have their own messages), 400 `No exec command specified`; publishes `exec_create: <cmd> <args>`;
 * - start: 404 `No such exec instance: <id>`; 409 `Error: Exec command <id> is already running` /
 *   `… has already run`; publishes `exec_start: <cmd> <args>`; a process that cannot start leaves
 *   ExitCode 126 (for every reason: not found, not executable, unknown user, missing cwd) and no
 *   exec_die; one that ran publishes `exec_die` with its exitCode once its output is drained, and
 *   its ExitCode is recorded before the output stream closes (the CLI inspects right after);
 * - the process's environment is the container's (PATH, HOSTNAME, TERM for a tty, Config.Env)
 *   with the exec's Env replacing or appending, its user and working dir default to the
 *   container's (resolved in the guest);
 * - a Tty exec runs on a terminal (one raw output stream), sized from the start's ConsoleSize and
 *   POST /exec/{id}/resize; with a Tty the end of the client's stdin (or its detach keys, seen by
 *   the API layer) ends the attachment only, the process goes on (dockerd's AttachConfig.TTY);
 * - ExecIDs of a container lists the execs created or running, not those that ended; instances are
 *   kept (inspectable) until the container is removed.
 */
import {
  ConflictError,
  InvalidParameterError,
  NotFoundError,
  SystemError,
  messageOf,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import type { ExitResult, OutputChunk, RunningExec, RunningSandbox } from '../runtime/types';
import { generateId, shortId } from './ids';
import { processEnv } from './merge';
import { withinMs } from './time';
import type { ContainerConfig } from './types';

export interface ExecCreateOptions {
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
  tty: boolean;
  attachStdin: boolean;
  attachStdout: boolean;
  attachStderr: boolean;
  privileged: boolean;
  detachKeys: string;
}

/** An exec instance as inspect shows it (the API layer encodes the wire shape). */
export interface ExecView {
  id: string;
  containerId: string;
  running: boolean;
  exitCode: number | null;
  pid: number;
  tty: boolean;
  entrypoint: string;
  arguments: string[];
  privileged: boolean;
  user: string;
  openStdin: boolean;
  openStdout: boolean;
  openStderr: boolean;
  detachKeys: string;
}

/** A running container as exec needs it. */
export interface ExecTarget {
  id: string;
  sandbox: RunningSandbox;
  config: ContainerConfig;
}

/** What the exec service needs from the container service. */
export interface ExecContainers {
  /** The container to run in; NotFound, or Conflict when it is not running (dockerd's words). */
  execTarget(ref: string): ExecTarget;
  /** Publishes a container event with the container's attributes plus `extra`. */
  publishContainerEvent(containerId: string, action: string, extra: Record<string, string>): void;
}

/** Where a started exec's output goes and where its stdin comes from (attached start). */
export interface ExecStreams {
  /** Returns false when the consumer needs a pause (then `drained`). */
  write(chunk: OutputChunk): boolean;
  drained(): Promise<void>;
  /** Client stdin (when AttachStdin); its end closes the process's stdin (not with a Tty). */
  stdin?: AsyncIterable<Buffer>;
  /**
   * Resolves when the client detached (Tty: detach keys, or the end of its stdin): start() then
   * resolves at once and the process goes on, its output no longer sent to these streams.
   */
  detached?: Promise<void>;
}

interface ExecInstance {
  view: ExecView;
  env: string[];
  workingDir: string;
  started: boolean;
  /** The attached client went away (detach): output is drained, not sent. */
  unattached?: boolean;
  process?: RunningExec;
  /** Settles once start() knows whether the process runs (then `process` is set, or not). */
  startSettled?: Promise<void>;
  /** Settles once the exit is recorded. */
  done?: Promise<void>;
}

/** How long a resize waits for its exec's process to start (dockerd's 10 s). */
const RESIZE_WAIT_FOR_START_MS = 10_000;

/** dockerd appends the containerd status (": unknown") to an OCI runtime's exec failure. */
function startFailureMessage(err: unknown): string {
  const message = messageOf(err);
  return message.startsWith('OCI runtime') && !message.endsWith(': unknown')
    ? `${message}: unknown`
    : message;
}

export class ExecService {
  private readonly execs = new Map<string, ExecInstance>();

  constructor(
    private readonly containers: ExecContainers,
    private readonly log: Logger,
  ) {}

  create(ref: string, options: ExecCreateOptions): string {
    const target = this.containers.execTarget(ref);
    if (options.cmd.length === 0) throw new InvalidParameterError('No exec command specified');
    const [entrypoint, ...args] = options.cmd as [string, ...string[]];
    const id = generateId();
    const config = target.config;
    const env = processEnv({ ...config, tty: options.tty, env: [...(config.env ?? []), ...options.env] });
    this.execs.set(id, {
      view: {
        id,
        containerId: target.id,
        running: false,
        exitCode: null,
        pid: 0,
        tty: options.tty,
        entrypoint,
        arguments: args,
        privileged: options.privileged,
        user: options.user,
        openStdin: options.attachStdin,
        openStdout: options.attachStdout,
        openStderr: options.attachStderr,
        detachKeys: options.detachKeys,
      },
      env,
      workingDir: options.workingDir,
      started: false,
    });
    this.containers.publishContainerEvent(target.id, `exec_create: ${entrypoint} ${args.join(' ')}`, {
      execID: id,
    });
    return id;
  }

  private get(id: string): ExecInstance {
    const exec = this.execs.get(id);
    if (!exec) throw new NotFoundError(`No such exec instance: ${id}`);
    return exec;
  }

  /** 404 when there is no such exec (checked before a start hijacks the connection). */
  exists(id: string): void {
    this.get(id);
  }

  inspect(id: string): ExecView {
    return { ...this.get(id).view };
  }

  /** ExecIDs of a container: the execs created or running. */
  execIdsOf(containerId: string): string[] {
    const ids: string[] = [];
    for (const e of this.execs.values()) {
      if (e.view.containerId === containerId && e.view.exitCode === null) ids.push(e.view.id);
    }
    return ids;
  }

  /** The container was removed: its execs go with it. */
  forgetContainer(containerId: string): void {
    for (const [id, e] of this.execs) if (e.view.containerId === containerId) this.execs.delete(id);
  }

  /**
   * Starts the exec. Detached (no `streams`): resolves once the process runs. Attached: resolves
   * once the process exited, its output went to `streams` and its exit was recorded. A failure to
   * start rejects (the route writes it into the stream when it already hijacked).
   */
  async start(id: string, streams?: ExecStreams, consoleSize?: [number, number]): Promise<void> {
    const exec = this.get(id);
    const view = exec.view;
    if (view.exitCode !== null) throw new ConflictError(`Error: Exec command ${id} has already run`);
    if (exec.started) throw new ConflictError(`Error: Exec command ${id} is already running`);
    const target = this.containers.execTarget(view.containerId);
    exec.started = true;
    view.running = true;
    this.containers.publishContainerEvent(
      view.containerId,
      `exec_start: ${view.entrypoint} ${view.arguments.join(' ')}`,
      { execID: id },
    );
    let settle!: () => void;
    exec.startSettled = new Promise((resolve) => (settle = resolve));
    let proc: RunningExec;
    try {
      proc = await target.sandbox.exec({
        execId: id,
        args: [view.entrypoint, ...view.arguments],
        env: exec.env,
        cwd: exec.workingDir,
        user: view.user,
        openStdin: view.openStdin,
        tty: view.tty,
        consoleSize: view.tty ? consoleSize : undefined,
      });
    } catch (err) {
      view.running = false;
      view.exitCode = 126;
      settle();
      throw new Error(startFailureMessage(err), { cause: err });
    }
    exec.process = proc;
    settle();
    view.pid = proc.pid;
    const log = this.log.child({ container: shortId(view.containerId), exec: shortId(id) });
    if (view.openStdin && streams?.stdin) void this.pumpStdin(proc, streams.stdin, !view.tty, log);
    else if (view.openStdin && !streams) void proc.closeStdin().catch(() => undefined);
    const pumped = this.pumpOutput(proc, exec, streams, log);
    exec.done = (async () => {
      const [result] = await Promise.all([proc.exited, pumped]);
      this.recordExit(exec, result);
    })();
    if (!streams) return;
    const detached = streams.detached?.then(() => {
      exec.unattached = true;
      log.debug('client detached from exec');
    });
    await (detached ? Promise.race([exec.done, detached]) : exec.done);
  }

  private recordExit(exec: ExecInstance, result: ExitResult): void {
    const view = exec.view;
    view.running = false;
    view.exitCode = result.exitCode;
    this.containers.publishContainerEvent(view.containerId, 'exec_die', {
      execID: view.id,
      exitCode: String(result.exitCode),
    });
  }

  /** Moves output to the client (attached streams only) or drops it; never leaves it unread. */
  private async pumpOutput(
    proc: RunningExec,
    exec: ExecInstance,
    streams: ExecStreams | undefined,
    log: Logger,
  ): Promise<void> {
    const view = exec.view;
    try {
      for await (const chunk of proc.output as AsyncIterable<OutputChunk>) {
        if (!streams || exec.unattached) continue;
        if ((chunk.stream === 1 && !view.openStdout) || (chunk.stream === 2 && !view.openStderr)) continue;
        if (!streams.write(chunk)) await streams.drained();
      }
    } catch (err) {
      log.debug('exec output ended', { error: messageOf(err) });
    }
  }

  /** `closeAtEnd`: the client's EOF closes the process's stdin (without a Tty; with one it stays open). */
  private async pumpStdin(
    proc: RunningExec,
    input: AsyncIterable<Buffer>,
    closeAtEnd: boolean,
    log: Logger,
  ): Promise<void> {
    let bytes = 0;
    try {
      for await (const data of input) {
        bytes += (data as Buffer).length;
        await proc.writeStdin(data);
      }
      log.debug('exec stdin closed by the client', { bytes });
    } catch (err) {
      log.debug('exec stdin ended', { error: messageOf(err) });
    }
    if (closeAtEnd) await proc.closeStdin().catch(() => undefined);
  }

  /** Signals a running exec's process (a healthcheck probe past its timeout); no-op otherwise. */
  async kill(id: string, signo: number): Promise<void> {
    const exec = this.execs.get(id);
    if (!exec?.process || !exec.view.running) return;
    await exec.process.signal(signo).catch(() => undefined);
  }

  /** Forgets an exec that has ended (healthcheck probes: dockerd does not keep them around). */
  remove(id: string): void {
    const exec = this.execs.get(id);
    if (exec && !exec.view.running) this.execs.delete(id);
  }

  /**
   * Terminal size of a running exec (SIGWINCH in the process); one without a tty accepts it as a
   * no-op (dockerd answers 200); one that is not running: 404 as dockerd. A resize that comes while
   * the exec is starting waits for its process, as dockerd's does (up to 10 s, then 500 with its
   * text): the docker CLI resizes right after the start, and under TCG a terminal exec takes longer
   * to start than the CLI's retries last ("failed to resize tty, using default size").
   */
  async resize(id: string, height: number, width: number): Promise<void> {
    const exec = this.get(id);
    if (!Number.isInteger(height) || !Number.isInteger(width) || height < 0 || width < 0) {
      throw new InvalidParameterError('invalid terminal size');
    }
    if (exec.view.running && !exec.process && exec.startSettled) {
      if (!(await withinMs(exec.startSettled, RESIZE_WAIT_FOR_START_MS))) {
        throw new SystemError('timeout waiting for exec session ready');
      }
    }
    if (!exec.view.running || !exec.process) throw new NotFoundError('no such exec');
    if (exec.view.tty) await exec.process.resize(height, width);
  }
}
