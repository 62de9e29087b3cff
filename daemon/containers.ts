/**
 * Container lifecycle: created → running → exited (→ running again …), removing, dead; plus the
 * "shim" side of a run: the sandbox's output goes to the json-file log and to live attach streams
 * (the log is always written, so nothing is lost when nobody attaches), and its exit becomes the
 * container's state.
 *
 * Ordering on exit (clients depend on it): the output is drained and flushed to the log, the state
 * (ExitCode, FinishedAt, OOMKilled, Pid 0) is persisted, and only then are attach streams closed,
 * waiters woken and `die` published; an AutoRemove container is then removed and `removed` waiters
 * are woken last.
 *
 * Locking: the per-container lock guards state transitions (start, exit bookkeeping, removal).
 * stop/kill only send signals and wait for the run to end, without the lock (the run's exit
 * bookkeeping needs it).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import {
  ConflictError,
  InvalidParameterError,
  NotFoundError,
  NotModifiedError,
  SystemError,
  errorCodeOf,
  messageOf,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import type { ImageRecord, ImageService } from '../images/types';
import type { RunningSandbox, SandboxRuntime, SandboxSpec } from '../runtime/types';
import { AttachHub } from './attach';
import { EventsBus } from './events';
import { filterContainers } from './filters';
import { generateId, generateName, isValidContainerName, shortId } from './ids';
import { JsonFileLogWriter, entryWanted, readLogFile } from './logs';
import { commandOf, mergeImageConfig, processEnv } from './merge';
import { SIGKILL, SIGTERM, isValidLinuxSignal, parseSignal } from './signals';
import { ContainerStore } from './store';
import { ZERO_TIME, formatRFC3339Nano, nowNs } from './time';
import type {
  AttachOptions,
  AttachSession,
  AttachSink,
  ContainerRecord,
  ContainerState,
  ContainerStatus,
  ContainerView,
  CreateContainerRequest,
  CreateContainerResult,
  ListContainersOptions,
  LogEntry,
  LogsOptions,
  LogsResult,
  OutputChunk,
  RemoveOptions,
  StopOptions,
  WaitCondition,
  WaitHandle,
  WaitResult,
} from './types';

/** The name the runtime is known by in /info and HostConfig.Runtime. */
export const RUNTIME_NAME = 'capsule-vm';

const DEFAULT_STOP_TIMEOUT_S = 10;
/** After SIGKILL, how long a sandbox may take to report the exit before it is destroyed. */
const KILL_GRACE_MS = 5000;
const DEFAULT_MEMORY_MIB = 256;
const DEFAULT_VCPUS = 1;

/** dockerd's State.StateString(). */
export function statusOf(state: ContainerState): ContainerStatus {
  if (state.running) {
    if (state.paused) return 'paused';
    if (state.restarting) return 'restarting';
    return 'running';
  }
  if (state.removalInProgress) return 'removing';
  if (state.dead) return 'dead';
  if (state.startedAt === ZERO_TIME) return 'created';
  return 'exited';
}

export function initialState(): ContainerState {
  return {
    running: false,
    paused: false,
    restarting: false,
    oomKilled: false,
    dead: false,
    removalInProgress: false,
    pid: 0,
    exitCode: 0,
    error: '',
    startedAt: ZERO_TIME,
    finishedAt: ZERO_TIME,
  };
}

/** "name" as dockerd familiarises image references in messages: a missing tag is ":latest". */
export function familiarImageRef(ref: string): string {
  if (ref.includes('@') || /^(sha256:)?[0-9a-f]{12,64}$/.test(ref)) return ref;
  const lastSlash = ref.lastIndexOf('/');
  return ref.slice(lastSlash + 1).includes(':') ? ref : `${ref}:latest`;
}

interface Run {
  readonly id: number;
  readonly sandbox: RunningSandbox;
  /** Settles after the exit bookkeeping (state persisted, attachers closed, waiters woken). */
  ended: Promise<void>;
}

interface Waiter {
  condition: WaitCondition;
  resolve(result: WaitResult): void;
}

/** In-memory, per-container companions of the persisted record. */
interface Live {
  hub: AttachHub;
  writer?: JsonFileLogWriter;
  run?: Run;
  starting: boolean;
  waiters: Set<Waiter>;
  removal?: Promise<void>;
}

export interface ContainerServiceOptions {
  store: ContainerStore;
  images: ImageService;
  runtime: SandboxRuntime;
  events: EventsBus;
  log: Logger;
  /** Per-run scratch dirs live under here, one per container. */
  execRoot: string;
}

function withinMs(promise: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    promise.then(
      () => {
        clearTimeout(timer);
        resolve(true);
      },
      () => {
        clearTimeout(timer);
        resolve(true);
      },
    );
  });
}

/** Re-throws `err` with a prefix, keeping its class for the HTTP mapping (via the cause chain). */
function prefixed(prefix: string, err: unknown): Error {
  return new Error(`${prefix}${messageOf(err)}`, { cause: err });
}

async function dirSize(dir: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await dirSize(p);
    else {
      try {
        total += (await fs.lstat(p)).size;
      } catch {
        // vanished meanwhile
      }
    }
  }
  return total;
}

export class ContainerService {
  private readonly live = new Map<string, Live>();
  private runCounter = 0;
  private readonly store: ContainerStore;
  private readonly images: ImageService;
  private readonly runtime: SandboxRuntime;
  private readonly events: EventsBus;
  private readonly log: Logger;
  private readonly execRoot: string;
  private shuttingDown = false;

  constructor(options: ContainerServiceOptions) {
    this.store = options.store;
    this.images = options.images;
    this.runtime = options.runtime;
    this.events = options.events;
    this.log = options.log;
    this.execRoot = options.execRoot;
  }

  /** Loads persisted containers. Those persisted as running lost their VM with the old daemon. */
  async init(): Promise<void> {
    const records = await this.store.load();
    for (const record of records) {
      if (record.state.removalInProgress) {
        await this.store.remove(record.id);
        continue;
      }
      if (record.state.running || record.state.paused || record.state.restarting) {
        if (record.hostConfig.autoRemove) {
          await this.store.remove(record.id);
          continue;
        }
        await this.store.update(record.id, (r) => {
          Object.assign(r.state, { running: false, paused: false, restarting: false, pid: 0, exitCode: 255 });
          r.state.finishedAt = formatRFC3339Nano(nowNs());
        });
        this.log.info('container was running when the daemon stopped; marked exited', { id: record.id });
      }
    }
  }

  private liveOf(id: string): Live {
    let live = this.live.get(id);
    if (!live) {
      live = {
        hub: new AttachHub(
          () => {
            const c = this.store.get(id)?.config;
            return { openStdin: c?.openStdin ?? false, stdinOnce: c?.stdinOnce ?? false };
          },
          this.log.child({ container: shortId(id) }),
        ),
        starting: false,
        waiters: new Set(),
      };
      this.live.set(id, live);
    }
    return live;
  }

  private view(record: ContainerRecord, imageName?: string): ContainerView {
    return {
      ...record,
      status: statusOf(record.state),
      imageName: imageName ?? record.config.image,
      logPath: this.store.logPathOf(record.id),
    };
  }

  private actor(
    record: ContainerRecord,
    extra: Record<string, string> = {},
  ): { id: string; attributes: Record<string, string> } {
    return {
      id: record.id,
      attributes: {
        ...(record.config.labels ?? {}),
        image: record.config.image,
        name: record.name.slice(1),
        ...extra,
      },
    };
  }

  private publish(record: ContainerRecord, action: string, extra?: Record<string, string>): void {
    this.events.publish('container', action, this.actor(record, extra));
  }

  counts(): { total: number; running: number; paused: number; stopped: number } {
    let running = 0;
    let paused = 0;
    const all = this.store.all();
    for (const r of all) {
      if (r.state.paused) paused++;
      else if (r.state.running) running++;
    }
    return { total: all.length, running, paused, stopped: all.length - running - paused };
  }

  // ---- create -------------------------------------------------------------------------------

  async create(request: CreateContainerRequest): Promise<CreateContainerResult> {
    const { config, hostConfig } = request;
    let name = request.name;
    if (name !== '' && !isValidContainerName(name)) {
      throw new InvalidParameterError(
        `Invalid container name (${name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`,
      );
    }
    if (config.image === '')
      throw new InvalidParameterError('Config cannot be empty in order to create a container');

    let image: ImageRecord;
    try {
      image = await this.images.get(config.image);
    } catch (err) {
      if (errorCodeOf(err) === 'NotFound') {
        throw new NotFoundError(`No such image: ${familiarImageRef(config.image)}`, { cause: err });
      }
      throw err;
    }

    const id = generateId();
    const merged = mergeImageConfig(config, image.config.config);
    if (merged.hostname === '') merged.hostname = shortId(id);
    const { path: cmdPath, args } = commandOf(merged);
    if (
      hostConfig.autoRemove &&
      hostConfig.restartPolicy.name !== '' &&
      hostConfig.restartPolicy.name !== 'no'
    ) {
      throw new InvalidParameterError("can't create 'AutoRemove' container with restart policy");
    }

    if (name === '') {
      for (let attempt = 0; ; attempt++) {
        name = `/${generateName(attempt > 2 ? attempt : 0)}`;
        if (!this.store.isNameTaken(name)) break;
      }
    } else if (!name.startsWith('/')) {
      name = `/${name}`;
    }
    this.store.reserveName(name, id);

    const record: ContainerRecord = {
      id,
      name,
      created: formatRFC3339Nano(nowNs()),
      path: cmdPath,
      args,
      imageId: image.id,
      config: merged,
      hostConfig: {
        ...hostConfig,
        runtime: hostConfig.runtime || RUNTIME_NAME,
        logConfig: { type: 'json-file', config: hostConfig.logConfig.config },
      },
      state: initialState(),
      restartCount: 0,
    };
    try {
      await this.store.create(record);
    } catch (err) {
      this.store.releaseName(name, id);
      await fs.rm(this.store.dirOf(id), { recursive: true, force: true });
      throw err;
    }
    this.publish(record, 'create');
    return { id, warnings: [] };
  }

  // ---- queries ------------------------------------------------------------------------------

  inspect(ref: string): ContainerView {
    return this.view(this.store.resolve(ref));
  }

  async list(options: ListContainersOptions): Promise<ContainerView[]> {
    const records = this.store
      .all()
      .sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
    const imageIdOf = new Map<string, string | undefined>();
    const resolveImage = async (ref: string): Promise<string | undefined> => {
      if (!imageIdOf.has(ref)) {
        imageIdOf.set(
          ref,
          await this.images.get(ref).then(
            (i) => i.id,
            () => undefined,
          ),
        );
      }
      return imageIdOf.get(ref);
    };
    const views: ContainerView[] = [];
    for (const r of records) {
      // dockerd shows the image's id once the name the container was created from moved on.
      const current = await resolveImage(r.config.image);
      views.push(this.view(r, current === r.imageId ? r.config.image : r.imageId));
    }
    const ancestorIds = new Map<string, string | undefined>();
    for (const ref of options.filters.ancestor ?? []) ancestorIds.set(ref, await resolveImage(ref));
    const selected = filterContainers(views, options.filters, options, {
      resolve: (ref) => this.view(this.store.resolve(ref)),
      imageMatches: (ref, c) => {
        const wanted = ancestorIds.get(ref);
        return (wanted !== undefined && wanted === c.imageId) || c.config.image === ref;
      },
    });
    if (options.size) {
      for (const c of selected) {
        c.sizeRw = await dirSize(path.join(this.store.layerDirOf(c.id), 'upper'));
        const image = await this.images.get(c.imageId).catch(() => undefined);
        c.sizeRootFs = c.sizeRw + (image?.size ?? 0);
      }
    }
    return selected;
  }

  // ---- start and the run ----------------------------------------------------------------------

  async start(ref: string): Promise<void> {
    const { id } = this.store.resolve(ref);
    let failure: { error: unknown; autoRemove: boolean } | undefined;
    await this.store.withLock(id, async () => {
      const record = this.store.get(id);
      if (!record) throw new NotFoundError(`No such container: ${ref}`);
      const live = this.liveOf(id);
      if (record.state.running || live.run) throw new NotModifiedError('Container already started');
      if (record.state.removalInProgress || live.removal) {
        throw new ConflictError('Container is marked for removal and cannot be started.');
      }
      if (record.state.dead)
        throw new ConflictError('Container is marked for removal and cannot be started.');
      if (this.shuttingDown) throw new ConflictError('the daemon is shutting down');

      live.starting = true;
      let sandbox: RunningSandbox;
      try {
        live.writer ??= await JsonFileLogWriter.open(this.store.logPathOf(id));
        sandbox = await this.runtime.start(await this.sandboxSpec(record));
      } catch (err) {
        live.starting = false;
        const carried = (err as { exitCode?: unknown }).exitCode;
        const exitCode = typeof carried === 'number' ? carried : 128;
        await this.store.updateLocked(id, (r) => {
          r.state.error = messageOf(err);
          r.state.exitCode = exitCode;
        });
        // dockerd answers 400 when the process could not be exec'd (126/127), else by class.
        const clientError =
          exitCode === 126 || exitCode === 127
            ? new InvalidParameterError(messageOf(err), { cause: err })
            : err;
        failure = { error: clientError, autoRemove: record.hostConfig.autoRemove };
        live.hub.failRun();
        return;
      }

      const runId = ++this.runCounter;
      const updated = await this.store
        .updateLocked(id, (r) => {
          Object.assign(r.state, {
            running: true,
            paused: false,
            restarting: false,
            oomKilled: false,
            dead: false,
            pid: sandbox.vmPid,
            exitCode: 0,
            error: '',
          });
          r.state.startedAt = formatRFC3339Nano(nowNs());
        })
        .catch(async (err: unknown) => {
          await sandbox.destroy().catch(() => undefined);
          throw err;
        });
      live.starting = false;
      const run: Run = { id: runId, sandbox, ended: Promise.resolve() };
      live.run = run;
      live.writer.beginRun();
      live.hub.beginRun(runId, sandbox);
      run.ended = this.supervise(id, live, run);
      this.publish(updated, 'start');
    });
    if (failure) {
      if (failure.autoRemove)
        await this.removeNow(id).catch((err: unknown) =>
          this.log.warn('auto-remove failed', { id, error: String(err) }),
        );
      throw failure.error;
    }
  }

  private async sandboxSpec(record: ContainerRecord): Promise<SandboxSpec> {
    const image = await this.images.get(record.imageId).catch((err: unknown) => {
      throw new NotFoundError(`No such image: ${record.imageId}`, { cause: err });
    });
    const layerDirs = await this.images.layerDirs(image);
    // Short: the VM's unix sockets live here and sun_path holds 107 bytes.
    const runDir = path.join(this.execRoot, record.id.slice(0, 12));
    await fs.mkdir(runDir, { recursive: true, mode: 0o700 });
    const memory = record.hostConfig.memory;
    return {
      containerId: record.id,
      hostname: record.config.hostname,
      layerDirs,
      containerLayerDir: this.store.layerDirOf(record.id),
      runDir,
      process: {
        args: [record.path, ...record.args],
        env: processEnv(record.config),
        cwd: record.config.workingDir,
        user: record.config.user,
        openStdin: record.config.openStdin,
        tty: record.config.tty,
      },
      resources: {
        memoryMiB: memory > 0 ? Math.max(64, Math.ceil(memory / (1024 * 1024))) : DEFAULT_MEMORY_MIB,
        vcpus:
          record.hostConfig.nanoCpus > 0
            ? Math.max(1, Math.ceil(record.hostConfig.nanoCpus / 1e9))
            : DEFAULT_VCPUS,
      },
    };
  }

  /** Pumps the run's output to the log and attachers, then records its exit (see file comment). */
  private async supervise(id: string, live: Live, run: Run): Promise<void> {
    const { sandbox } = run;
    const writer = live.writer;
    const log = this.log.child({ container: shortId(id) });
    const pump = (async () => {
      for await (const chunk of sandbox.output as AsyncIterable<OutputChunk>) {
        writer?.write(chunk);
        const wait = live.hub.broadcast(chunk);
        if (wait) await wait;
      }
    })().catch((err: unknown) => log.warn('output stream failed', { error: String(err) }));
    let exitCode: number;
    let oomKilled = false;
    try {
      const exit = await sandbox.exited;
      exitCode = exit.exitCode;
      oomKilled = exit.oomKilled;
    } catch (err) {
      log.warn('sandbox failed', { error: String(err) });
      exitCode = 255;
    }
    await pump;
    await writer?.endRun();

    let record: ContainerRecord | undefined;
    await this.store
      .withLock(id, async () => {
        if (!this.store.get(id)) return;
        record = await this.store.updateLocked(id, (r) => {
          Object.assign(r.state, {
            running: false,
            paused: false,
            restarting: false,
            pid: 0,
            exitCode,
            oomKilled,
          });
          r.state.finishedAt = formatRFC3339Nano(nowNs());
        });
      })
      .catch((err: unknown) => log.error('could not record the exit', { error: String(err) }));
    if (live.run === run) live.run = undefined;
    live.hub.endRun(run.id);
    this.wake(live, ['not-running', 'next-exit'], { statusCode: exitCode, error: null });
    if (record) {
      if (oomKilled) this.publish(record, 'oom');
      this.publish(record, 'die', { exitCode: String(exitCode) });
      if (record.hostConfig.autoRemove && !live.removal && !this.shuttingDown) {
        await this.removeNow(id).catch((err: unknown) =>
          log.warn('auto-remove failed', { error: String(err) }),
        );
      }
    }
  }

  private wake(live: Live, conditions: WaitCondition[], result: WaitResult): void {
    for (const waiter of [...live.waiters]) {
      if (!conditions.includes(waiter.condition)) continue;
      live.waiters.delete(waiter);
      waiter.resolve(result);
    }
  }

  // ---- stop, kill, restart --------------------------------------------------------------------

  private runningRun(ref: string): { record: ContainerRecord; run: Run | undefined } {
    const record = this.store.resolve(ref);
    return { record, run: this.live.get(record.id)?.run };
  }

  async stop(ref: string, options: StopOptions = {}): Promise<void> {
    const { record, run } = this.runningRun(ref);
    if (!run) throw new NotModifiedError('Container already stopped');
    const signal =
      options.signal !== undefined && options.signal !== ''
        ? parseSignal(options.signal)
        : record.config.stopSignal !== ''
          ? parseSignal(record.config.stopSignal)
          : SIGTERM;
    const timeoutS = options.timeout ?? record.config.stopTimeout ?? DEFAULT_STOP_TIMEOUT_S;
    this.publish(record, 'kill', { signal: String(signal) });
    await run.sandbox
      .signal(signal)
      .catch((err: unknown) => this.log.debug('stop signal failed', { error: String(err) }));
    const stopped = timeoutS < 0 ? (await run.ended, true) : await withinMs(run.ended, timeoutS * 1000);
    if (!stopped) {
      this.log.info('container did not stop in time; killing it', { id: record.id, timeoutS });
      await this.forceKill(record, run);
    }
    this.publish(record, 'stop');
  }

  private async forceKill(record: ContainerRecord, run: Run): Promise<void> {
    this.publish(record, 'kill', { signal: String(SIGKILL) });
    await run.sandbox.signal(SIGKILL).catch(() => undefined);
    if (!(await withinMs(run.ended, KILL_GRACE_MS))) {
      await run.sandbox
        .destroy()
        .catch((err: unknown) => this.log.warn('destroy failed', { error: String(err) }));
      await run.ended;
    }
  }

  async kill(ref: string, signalText: string | undefined): Promise<void> {
    const signal = signalText === undefined || signalText === '' ? SIGKILL : parseSignal(signalText);
    try {
      const { record, run } = this.runningRun(ref);
      if (!isValidLinuxSignal(signal))
        throw new SystemError(`The linux daemon does not support signal ${signal}`);
      if (!run) throw new ConflictError(`Container ${record.id} is not running`);
      if (signal === SIGKILL) {
        await this.forceKill(record, run);
      } else {
        this.publish(record, 'kill', { signal: String(signal) });
        await run.sandbox.signal(signal);
      }
    } catch (err) {
      throw prefixed(`Cannot kill container: ${ref}: `, err);
    }
  }

  async restart(ref: string, options: StopOptions = {}): Promise<void> {
    const record = this.store.resolve(ref);
    try {
      await this.stop(record.id, options);
    } catch (err) {
      if (!(err instanceof NotModifiedError)) throw err;
    }
    await this.start(record.id);
    this.publish(record, 'restart');
  }

  async resize(ref: string, _height: number, _width: number): Promise<void> {
    const { record, run } = this.runningRun(ref);
    if (!run) throw new ConflictError(`Container ${record.id} is not running`);
    // The runtime has no terminal resize yet: accepted and ignored.
  }

  // ---- remove ---------------------------------------------------------------------------------

  async remove(ref: string, options: RemoveOptions): Promise<void> {
    const record = this.store.resolve(ref);
    const live = this.liveOf(record.id);
    if (live.removal) return live.removal;
    if (live.run || record.state.running) {
      if (!options.force) {
        throw new ConflictError(
          `You cannot remove a running container ${record.id}. Stop the container before attempting removal or force remove`,
        );
      }
    }
    await this.removeNow(record.id);
  }

  /** Destroys a live sandbox, then deletes the container; idempotent while in progress. */
  private removeNow(id: string): Promise<void> {
    const live = this.liveOf(id);
    if (live.removal) return live.removal;
    live.removal = (async () => {
      const run = live.run;
      if (run) {
        await run.sandbox
          .destroy()
          .catch((err: unknown) => this.log.warn('destroy failed', { id, error: String(err) }));
        await run.ended;
      }
      const record = this.store.get(id);
      if (!record) return;
      await this.store.withLock(id, async () => {
        await this.store.updateLocked(id, (r) => (r.state.removalInProgress = true)).catch(() => undefined);
        live.hub.closeAll();
        await live.writer?.close();
        live.writer = undefined;
        await this.store.remove(id);
        await fs.rm(path.join(this.execRoot, id), { recursive: true, force: true }).catch(() => undefined);
      });
      this.live.delete(id);
      this.publish(record, 'destroy');
      // dockerd answers `removed` waiters with the last exit code and no error.
      this.wake(live, ['removed', 'not-running', 'next-exit'], {
        statusCode: record.state.exitCode,
        error: null,
      });
    })();
    return live.removal;
  }

  // ---- wait -----------------------------------------------------------------------------------

  wait(ref: string, condition: WaitCondition): WaitHandle {
    const record = this.store.resolve(ref);
    const live = this.liveOf(record.id);
    if (condition === 'not-running' && !live.run && !live.starting && !record.state.running) {
      const current = this.store.get(record.id) ?? record;
      return {
        result: Promise.resolve({ statusCode: current.state.exitCode, error: current.state.error || null }),
        cancel: () => undefined,
      };
    }
    let waiter!: Waiter;
    const result = new Promise<WaitResult>((resolve) => {
      waiter = { condition, resolve };
    });
    live.waiters.add(waiter);
    return { result, cancel: () => live.waiters.delete(waiter) };
  }

  // ---- attach ---------------------------------------------------------------------------------

  attach(ref: string, options: AttachOptions): AttachSession {
    const record = this.store.resolve(ref);
    if (record.state.paused) {
      throw new ConflictError(`Container ${record.id} is paused, unpause the container before attach.`);
    }
    const id = record.id;
    const live = this.liveOf(id);
    const hub = live.hub;
    const wantsStdin = options.stdin && record.config.openStdin;
    let attacher: ReturnType<AttachHub['add']> | undefined;
    let detached = false;
    this.publish(record, 'attach');
    return {
      containerId: id,
      tty: record.config.tty,
      start: (sink: AttachSink) => {
        if (!options.stream) {
          if (!options.logs) return sink.close();
          void this.replay(id, live, options, sink).finally(() => sink.close());
          return;
        }
        attacher = hub.add(sink, options.stdout, options.stderr, options.logs);
        if (options.logs) {
          const a = attacher;
          void this.replay(id, live, options, sink).finally(() => {
            if (!detached) hub.release(a);
          });
        }
      },
      writeStdin: (data: Buffer) => {
        if (wantsStdin && !detached) hub.writeStdin(data);
      },
      endStdin: () => {
        if (wantsStdin && !detached) hub.endStdin();
      },
      detach: () => {
        detached = true;
        if (attacher) hub.remove(attacher);
      },
    };
  }

  private async replay(id: string, live: Live, options: AttachOptions, sink: AttachSink): Promise<void> {
    await live.writer?.flushed();
    const endByte = live.writer?.committedBytes;
    for await (const entry of readLogFile(this.store.logPathOf(id), {
      stdout: options.stdout,
      stderr: options.stderr,
      endByte,
    })) {
      if (!sink.write({ stream: entry.stream, data: entry.data })) await sink.drained();
    }
  }

  // ---- logs -----------------------------------------------------------------------------------

  async logs(ref: string, options: LogsOptions, signal?: AbortSignal): Promise<LogsResult> {
    const record = this.store.resolve(ref);
    if (!options.stdout && !options.stderr) {
      throw new InvalidParameterError('Bad parameters: you must choose at least one stream');
    }
    const live = this.liveOf(record.id);
    const filePath = this.store.logPathOf(record.id);
    const writer = live.writer;
    const follow = options.follow && writer !== undefined && (live.run !== undefined || live.starting);
    let subscription: ReturnType<JsonFileLogWriter['subscribe']> | undefined;
    if (follow && writer) {
      await writer.flushed();
      subscription = writer.subscribe();
    }
    const sub = subscription;
    const untilNs = options.untilNs;
    const entries = async function* (): AsyncGenerator<LogEntry> {
      let untilTimer: NodeJS.Timeout | undefined;
      const onAbort = (): void => sub?.close();
      signal?.addEventListener('abort', onAbort);
      try {
        yield* readLogFile(filePath, { ...options, endByte: sub?.committedBytes });
        if (!sub) return;
        if (untilNs !== undefined) {
          const ms = Number((untilNs - nowNs()) / 1_000_000n);
          if (ms <= 0) return;
          untilTimer = setTimeout(() => sub.close(), ms);
        }
        for (;;) {
          const entry = await sub.next();
          if (!entry) return;
          if (untilNs !== undefined && entry.timeNs > untilNs) return;
          if (entryWanted(entry, { ...options, tail: undefined })) yield entry;
        }
      } finally {
        if (untilTimer) clearTimeout(untilTimer);
        signal?.removeEventListener('abort', onAbort);
        sub?.close();
      }
    };
    return { tty: record.config.tty, entries: entries() };
  }

  // ---- shutdown -------------------------------------------------------------------------------

  /** Destroys every running sandbox and waits (bounded) for their exits to be recorded. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    this.shuttingDown = true;
    const ends: Promise<void>[] = [];
    for (const live of this.live.values()) {
      const run = live.run;
      if (!run) continue;
      ends.push(
        run.sandbox
          .destroy()
          .catch(() => undefined)
          .then(() => run.ended),
      );
    }
    await withinMs(Promise.all(ends), timeoutMs);
    for (const live of this.live.values()) await live.writer?.close().catch(() => undefined);
  }
}
