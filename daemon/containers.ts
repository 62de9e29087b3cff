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
 * Restart policies (daemon/restart.ts): after an exit the policy may put the container in the
 * `restarting` state (Running and Restarting both true, Pid 0, RestartCount + 1) and start it again
 * after the backoff delay; waiters and `die` see every exit. A user's stop or kill cancels it; a
 * user's start resets the count. On daemon start, containers the policy wants running are started
 * again (in the background: VM boots are slow).
 *
 * Locking: the per-container lock guards state transitions (start, exit bookkeeping, removal,
 * rename, update). stop/kill only send signals and wait for the run to end, without the lock (the
 * run's exit bookkeeping needs it); they first wait for a start in flight.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
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
import { checkStartOptions, validateContainerOptions } from '../runtime/oci-spec';
import type { ContainerOptions, RunningSandbox, SandboxRuntime, SandboxSpec } from '../runtime/types';
import { AttachHub } from './attach';
import { EventsBus } from './events';
import { mergeLogOptions } from './config';
import { filterContainers, matchKVList, validateFilterKeys } from './filters';
import { generateId, generateName, isValidContainerName, shortId } from './ids';
import {
  JsonFileLogWriter,
  LogFiles,
  type LogSubscription,
  entryWanted,
  openLogFiles,
  parseLogOptions,
  readLogEntries,
  readOptionsOf,
  validateLogOptions,
} from './logs';
import { probeCommand, startingHealth } from './health';
import { commandOf, mergeImageConfig, processEnv } from './merge';
import { PortAllocator, portMapOf, portRequestsOf, type PublishedPort } from './ports';
import {
  RestartBackoff,
  isNoRestart,
  policyWantsRestart,
  systemClock,
  validateRestartPolicy,
  type RestartClock,
} from './restart';
import { SIGKILL, SIGTERM, isValidLinuxSignal, parseSignal } from './signals';
import { ContainerStore } from './store';
import { ZERO_TIME, formatRFC3339Nano, nowNs, parseRFC3339Nano, withinMs } from './time';
import { resolveTimestamp } from './timestamps';
import type {
  AttachOptions,
  AttachSession,
  AttachSink,
  ContainerConfig,
  ContainerRecord,
  ContainerState,
  ContainerStatus,
  ContainerView,
  CreateContainerRequest,
  HealthState,
  CreateContainerResult,
  ListContainersOptions,
  LogEntry,
  LogsOptions,
  LogsResult,
  OutputChunk,
  PruneContainersResult,
  RemoveOptions,
  ResourceUpdate,
  StopOptions,
  UpdateContainerRequest,
  UpdateContainerResult,
  WaitCondition,
  WaitHandle,
  WaitResult,
  FilterArgs,
  HostConfig,
} from './types';

/** The name the runtime is known by in /info and HostConfig.Runtime. */
export const RUNTIME_NAME = 'capsule-vm';

const DEFAULT_STOP_TIMEOUT_S = 10;
/** After SIGKILL, how long a sandbox may take to report the exit before it is destroyed. */
const KILL_GRACE_MS = 5000;
const DEFAULT_MEMORY_MIB = 256;
/** RAM a VM needs beside its container: guest kernel, agent (node), page cache headroom. */
const GUEST_MEMORY_OVERHEAD_MIB = 128;
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
  /** True while a start holds the lock (the VM boots). */
  starting: boolean;
  /** Settles when the start in flight (manual or by the policy) is over; stop and kill wait for it. */
  inFlightStart?: Promise<void>;
  waiters: Set<Waiter>;
  removal?: Promise<void>;
  backoff: RestartBackoff;
  /** A restart the policy scheduled that has not begun (the container is `restarting`). */
  pendingRestart?: { handle: unknown; exitCode: number };
  /** Set while `docker restart` stops the run: that exit removes no AutoRemove container. */
  keepOnExit: boolean;
  /** clock.now() when the current run started (the backoff resets after a long run). */
  runStartedMs: number;
  /** Host ports published for the current run (held in the PortAllocator until it ends). */
  published?: PublishedPort[];
}

type StartMode = 'manual' | 'policy';

/** A container's filesystem as withFilesystem offers it. */
export interface ContainerFilesystem {
  record: ContainerRecord;
  containerLayerDir: string;
  /** The writable layer's overlay upper dir (diff, commit read it with lstat only). */
  upperDir: string;
  /** Set while the container runs: its filesystem is reached through the guest agent. */
  sandbox?: RunningSandbox;
  /** The image's layer dirs, lowest first (the overlay's lower dirs). */
  layerDirs: string[];
  /** Where private mounts may go. */
  execRoot: string;
}

export interface ContainerServiceOptions {
  store: ContainerStore;
  images: ImageService;
  runtime: SandboxRuntime;
  events: EventsBus;
  log: Logger;
  /** Per-run scratch dirs live under here, one per container. */
  execRoot: string;
  /** Restart backoff time; the system clock unless a test injects one. */
  clock?: RestartClock;
  /** Host port allocation; a fresh one unless a test injects one. */
  ports?: PortAllocator;
  /** The daemon's log-opts (daemon.json), merged into every new container's LogConfig.Config. */
  defaultLogOptions?: Record<string, string>;
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
  private readonly clock: RestartClock;
  private readonly ports: PortAllocator;
  private readonly defaultLogOptions: Record<string, string>;
  private shuttingDown = false;
  private pruning = false;
  private restored: Promise<void> = Promise.resolve();

  constructor(options: ContainerServiceOptions) {
    this.store = options.store;
    this.images = options.images;
    this.runtime = options.runtime;
    this.events = options.events;
    this.log = options.log;
    this.execRoot = options.execRoot;
    this.clock = options.clock ?? systemClock;
    this.ports = options.ports ?? new PortAllocator();
    this.defaultLogOptions = options.defaultLogOptions ?? {};
  }

  /**
   * Loads persisted containers. Those persisted as running lost their VM with the old daemon and
   * are marked exited (255); then, as dockerd does on start, every container its restart policy
   * wants running is started again: `always` ones, `unless-stopped` ones the user did not stop,
   * `on-failure` ones whose last exit failed with retries left. Those starts run in the
   * background (see `whenRestored`).
   */
  async init(): Promise<void> {
    const records = await this.store.load();
    const restart: string[] = [];
    for (const loaded of records) {
      let record = loaded;
      if (record.state.removalInProgress) {
        await this.store.remove(record.id);
        continue;
      }
      if (record.state.running || record.state.paused || record.state.restarting) {
        if (record.hostConfig.autoRemove) {
          await this.store.remove(record.id);
          continue;
        }
        const wasRestarting = record.state.restarting;
        record = await this.store.update(record.id, (r) => {
          Object.assign(r.state, { running: false, paused: false, restarting: false, pid: 0 });
          // A container waiting for its restart had exited already, with its own code.
          if (!wasRestarting) r.state.exitCode = 255;
          r.state.finishedAt = formatRFC3339Nano(nowNs());
        });
        this.log.info('container was running when the daemon stopped; marked exited', { id: record.id });
      }
      if (this.restartsOnDaemonStart(record)) restart.push(record.id);
    }
    this.restored = Promise.all(
      restart.map((id) =>
        this.trackStart(id, this.startContainer(id, 'manual')).catch((err: unknown) =>
          this.log.warn('could not restart container on daemon start', { id, error: messageOf(err) }),
        ),
      ),
    ).then(() => undefined);
  }

  /** Settles when the starts `init` began for restart policies are over. */
  whenRestored(): Promise<void> {
    return this.restored;
  }

  /** dockerd's restore rule: the policy's answer for the last exit, for a container started before. */
  private restartsOnDaemonStart(record: ContainerRecord): boolean {
    if (record.state.startedAt === ZERO_TIME || record.hostConfig.autoRemove) return false;
    return policyWantsRestart(record.hostConfig.restartPolicy, {
      exitCode: record.state.exitCode,
      manuallyStopped: record.hasBeenManuallyStopped,
      restartCount: record.restartCount,
    });
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
        backoff: new RestartBackoff(),
        keepOnExit: false,
        runStartedMs: 0,
      };
      this.live.set(id, live);
    }
    return live;
  }

  private view(record: ContainerRecord, imageName?: string): ContainerView {
    const published = record.state.running ? this.live.get(record.id)?.published : undefined;
    return {
      ...record,
      status: statusOf(record.state),
      imageName: imageName ?? record.config.image,
      logPath: this.store.logPathOf(record.id),
      ports: record.state.running ? portMapOf(record.config, record.hostConfig, published ?? []) : {},
    };
  }

  /** dockerd's event attributes: the action's own, then labels, then image and name over both. */
  private actor(
    record: ContainerRecord,
    extra: Record<string, string> = {},
  ): { id: string; attributes: Record<string, string> } {
    const attributes: Record<string, string> = { ...extra, ...(record.config.labels ?? {}) };
    if (record.config.image !== '') attributes.image = record.config.image;
    attributes.name = record.name.slice(1);
    return { id: record.id, attributes };
  }

  private publish(record: ContainerRecord, action: string, extra?: Record<string, string>): void {
    this.events.publish('container', action, this.actor(record, extra));
  }

  counts(): { total: number; running: number; paused: number; stopped: number } {
    let running = 0;
    let paused = 0;
    const all = this.store.all();
    for (const r of all) {
      // As dockerd's state counter: a restarting container counts as stopped.
      if (r.state.paused) paused++;
      else if (r.state.running && !r.state.restarting) running++;
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
    validateRestartPolicy(hostConfig.restartPolicy);
    validateResources(hostConfig.memory, hostConfig.nanoCpus, {
      memorySwap: numberOr0(hostConfig.passthrough.MemorySwap),
      memoryReservation: numberOr0(hostConfig.passthrough.MemoryReservation),
    });
    if (hostConfig.autoRemove && !isNoRestart(hostConfig.restartPolicy)) {
      throw new InvalidParameterError("can't create 'AutoRemove' container with restart policy");
    }

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
    portRequestsOf(merged, hostConfig); // dockerd's port specification checks (400)
    validateContainerOptions(containerOptionsOf(hostConfig));
    // dockerd checks log options once it has the image, the rest before.
    // dockerd's mergeAndVerifyLogConfig: the daemon's log-opts fill the keys left unset; the
    // merged options are persisted (inspect shows them) and checked together.
    const logConfig = {
      type: 'json-file',
      config: mergeLogOptions(hostConfig.logConfig.config, this.defaultLogOptions),
    };
    validateLogOptions(logConfig.config);

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
      hostConfig: normalizeHostConfig({ ...hostConfig, logConfig }),
      state: initialState(),
      restartCount: 0,
      hasBeenManuallyStopped: false,
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

  /** A user's start: resets the restart count and backoff and clears a manual stop. */
  async start(ref: string): Promise<void> {
    const { id } = this.store.resolve(ref);
    await this.trackStart(id, this.startContainer(id, 'manual'));
  }

  /** Records `start` as the container's start in flight until it settles. */
  private trackStart(id: string, start: Promise<void>): Promise<void> {
    const live = this.liveOf(id);
    const settled = start.then(
      () => undefined,
      () => undefined,
    );
    live.inFlightStart = settled;
    void settled.then(() => {
      if (live.inFlightStart === settled) live.inFlightStart = undefined;
    });
    return start;
  }

  /**
   * Starts a run. `manual`: 304 when running (or restarting); resets the restart state. `policy`:
   * the restart a policy scheduled; does nothing when that restart was cancelled meanwhile.
   */
  private async startContainer(id: string, mode: StartMode): Promise<void> {
    let failure: { error: unknown; autoRemove: boolean } | undefined;
    await this.store.withLock(id, async () => {
      const record = this.store.get(id);
      if (!record) throw new NotFoundError(`No such container: ${id}`);
      const live = this.liveOf(id);
      if (mode === 'policy') {
        if (!record.state.restarting || live.run || live.removal || this.shuttingDown) return;
      } else if (record.state.running || live.run) {
        throw new NotModifiedError('Container already started');
      }
      if (record.state.removalInProgress || live.removal || record.state.dead) {
        throw new ConflictError('Container is marked for removal and cannot be started.');
      }
      if (this.shuttingDown) throw new ConflictError('the daemon is shutting down');

      const manual = mode === 'manual';
      if (manual) live.backoff = new RestartBackoff();
      live.starting = true;
      let sandbox: RunningSandbox;
      try {
        live.writer ??= await JsonFileLogWriter.open(
          this.store.logPathOf(id),
          parseLogOptions(record.hostConfig.logConfig.config),
        );
        live.published = await this.ports.allocate(
          id,
          record.name.slice(1),
          portRequestsOf(record.config, record.hostConfig),
        );
        sandbox = await this.runtime.start(await this.sandboxSpec(record, live.published));
      } catch (err) {
        this.ports.release(id);
        live.published = undefined;
        live.starting = false;
        const carried = (err as { exitCode?: unknown }).exitCode;
        const exitCode = typeof carried === 'number' ? carried : 128;
        await this.store.updateLocked(id, (r) => {
          r.state.error = messageOf(err);
          if (manual) {
            r.state.exitCode = exitCode;
            r.restartCount = 0;
            r.hasBeenManuallyStopped = false;
          } else {
            // dockerd: a restart that cannot start leaves the container stopped with the exit
            // code that triggered the restart, and the start's error.
            Object.assign(r.state, { running: false, restarting: false, paused: false, pid: 0 });
          }
        });
        if (!manual) {
          this.wake(live, ['not-running', 'next-exit'], {
            statusCode: record.state.exitCode,
            error: messageOf(err),
          });
        }
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
          // dockerd's initHealthMonitor: "starting" (log kept) before the start returns; the
          // probing itself is daemon/health.ts's, on the start event.
          if (probeCommand(r.config.healthcheck, r.config.shell))
            r.state.health = startingHealth(r.state.health);
          if (manual) {
            r.restartCount = 0;
            r.hasBeenManuallyStopped = false;
          }
        })
        .catch(async (err: unknown) => {
          live.starting = false;
          await sandbox.destroy().catch(() => undefined);
          this.ports.release(id);
          live.published = undefined;
          throw err;
        });
      live.starting = false;
      const run: Run = { id: runId, sandbox, ended: Promise.resolve() };
      live.run = run;
      live.runStartedMs = this.clock.now();
      live.writer.beginRun();
      live.hub.beginRun(runId, sandbox);
      run.ended = this.supervise(id, live, run);
      this.publish(updated, 'start');
    });
    if (failure) {
      if (failure.autoRemove) {
        // This start is over: the removal must not wait for it.
        this.liveOf(id).inFlightStart = undefined;
        await this.removeNow(id).catch((err: unknown) =>
          this.log.warn('auto-remove failed', { id, error: String(err) }),
        );
      }
      throw failure.error;
    }
  }

  private async sandboxSpec(record: ContainerRecord, published: PublishedPort[]): Promise<SandboxSpec> {
    const image = await this.images.get(record.imageId).catch((err: unknown) => {
      throw new NotFoundError(`No such image: ${record.imageId}`, { cause: err });
    });
    const layerDirs = await this.images.layerDirs(image);
    // Short: the VM's unix sockets live here and sun_path holds 107 bytes.
    const runDir = path.join(this.execRoot, record.id.slice(0, 12));
    await fs.mkdir(runDir, { recursive: true, mode: 0o700 });
    const memory = record.hostConfig.memory;
    const options = containerOptionsOf(record.hostConfig);
    checkStartOptions(options); // dockerd's start errors, before a VM is taken
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
        consoleSize: record.hostConfig.consoleSize,
      },
      resources: {
        // -m limits the container (its cgroup, runtime/oci-spec.ts); the VM also holds the guest
        // kernel and the agent, so it gets that much more (a VM of -m alone did not boot below ~128m).
        memoryMiB:
          memory > 0 ? Math.ceil(memory / (1024 * 1024)) + GUEST_MEMORY_OVERHEAD_MIB : DEFAULT_MEMORY_MIB,
        vcpus:
          record.hostConfig.nanoCpus > 0
            ? Math.max(1, Math.ceil(record.hostConfig.nanoCpus / 1e9))
            : DEFAULT_VCPUS,
      },
      options,
      portForwards: published.map((p) => ({
        proto: p.proto,
        hostAddr: p.hostIp,
        hostPort: p.hostPort,
        guestPort: p.containerPort,
      })),
    };
  }

  /** Pumps the run's output to the log and attachers, then records its exit (see file comment). */
  private async supervise(id: string, live: Live, run: Run): Promise<void> {
    const { sandbox } = run;
    const writer = live.writer;
    const log = this.log.child({ container: shortId(id) });
    const pump = (async () => {
      for await (const chunk of sandbox.output as AsyncIterable<OutputChunk>) {
        // Both the log and the attached clients apply backpressure: nothing is lost, nothing piles up.
        const written = writer?.write(chunk);
        const wait = live.hub.broadcast(chunk);
        if (written) await written;
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
    // The VM is gone (exited resolves after it): its host ports are free again.
    this.ports.release(id);
    live.published = undefined;

    const runMs = this.clock.now() - live.runStartedMs;
    let record: ContainerRecord | undefined;
    let restartDelay: number | undefined;
    await this.store
      .withLock(id, async () => {
        const current = this.store.get(id);
        if (!current) return;
        if (!this.shuttingDown && !live.removal && !live.keepOnExit) {
          restartDelay = live.backoff.next(current.hostConfig.restartPolicy, {
            exitCode,
            manuallyStopped: current.hasBeenManuallyStopped,
            restartCount: current.restartCount,
            runMs,
          });
        }
        const restarting = restartDelay !== undefined;
        record = await this.store.updateLocked(id, (r) => {
          // Restarting counts as running (dockerd's SetRestarting): stop, rm and wait treat it so.
          Object.assign(r.state, {
            running: restarting,
            paused: false,
            restarting,
            pid: 0,
            exitCode,
            oomKilled,
          });
          r.state.finishedAt = formatRFC3339Nano(nowNs());
          if (restarting) r.restartCount++;
          // dockerd closes the health monitor in the same locked step that records the exit
          // (updateHealthMonitor), marking the health "unhealthy" with streak and log kept: a
          // `docker stop` that returns already shows it, whatever a probe in flight still does.
          if (r.state.health) r.state.health = { ...r.state.health, status: 'unhealthy' };
        });
      })
      .catch((err: unknown) => {
        restartDelay = undefined;
        log.error('could not record the exit', { error: String(err) });
      });
    if (live.run === run) live.run = undefined;
    live.hub.endRun(run.id);
    this.wake(live, ['not-running', 'next-exit'], { statusCode: exitCode, error: null });
    if (!record) return;
    if (oomKilled) this.publish(record, 'oom');
    this.publish(record, 'die', { exitCode: String(exitCode) });
    if (restartDelay !== undefined) {
      log.debug('restarting by policy', { delayMs: restartDelay, restartCount: record.restartCount });
      const handle = this.clock.setTimeout(() => {
        if (live.pendingRestart?.handle !== handle) return;
        // A stop or kill that came while this exit was being recorded.
        if (live.backoff.cancelled) {
          void this.cancelPendingRestart(id, live);
          return;
        }
        live.pendingRestart = undefined;
        void this.trackStart(id, this.startContainer(id, 'policy')).catch((err: unknown) =>
          log.warn('restart by policy failed', { error: messageOf(err) }),
        );
      }, restartDelay);
      live.pendingRestart = { handle, exitCode };
      return;
    }
    if (record.hostConfig.autoRemove && !live.removal && !this.shuttingDown && !live.keepOnExit) {
      await this.removeNow(id).catch((err: unknown) =>
        log.warn('auto-remove failed', { error: String(err) }),
      );
    }
  }

  /**
   * Drops a scheduled restart (stop, kill or rm of a `restarting` container): the container is
   * stopped with the exit code it had, and waiters that came during `restarting` are woken.
   */
  private async cancelPendingRestart(id: string, live: Live): Promise<boolean> {
    const pending = live.pendingRestart;
    if (!pending) return false;
    this.clock.clearTimeout(pending.handle);
    live.pendingRestart = undefined;
    const record = await this.store
      .update(id, (r) => Object.assign(r.state, { running: false, restarting: false, pid: 0 }))
      .catch(() => undefined);
    this.wake(live, ['not-running', 'next-exit'], { statusCode: pending.exitCode, error: null });
    return record !== undefined;
  }

  private wake(live: Live, conditions: WaitCondition[], result: WaitResult): void {
    for (const waiter of [...live.waiters]) {
      if (!conditions.includes(waiter.condition)) continue;
      live.waiters.delete(waiter);
      waiter.resolve(result);
    }
  }

  // ---- stop, kill, restart --------------------------------------------------------------------

  /**
   * A user's signal (stop or kill), as dockerd's killWithSignal records it: the container counts
   * as manually stopped (unless-stopped keeps it down), and when the signal is SIGKILL or the stop
   * signal (any signal when none is configured) the current run is not restarted.
   */
  private async noteUserSignal(record: ContainerRecord, live: Live, signal: number): Promise<void> {
    if (endsRun(record, signal)) live.backoff.cancel();
    if (this.shuttingDown || record.hasBeenManuallyStopped) return;
    await this.store.update(record.id, (r) => (r.hasBeenManuallyStopped = true)).catch(() => undefined);
  }

  /**
   * dockerd's killWithSignal on a paused container: a signal that ends the run (see endsRun)
   * resumes it, with the `unpause` event its resume brings. Other signals stay pending until an
   * unpause; the VM cannot take them while stopped, so they are sent in the background.
   */
  private async resumeForSignal(record: ContainerRecord, run: Run, signal: number): Promise<boolean> {
    if (!this.store.get(record.id)?.state.paused) return true;
    if (!endsRun(record, signal)) return false;
    await run.sandbox
      .resume()
      .catch((err: unknown) =>
        this.log.warn('cannot unpause the container', { id: record.id, error: messageOf(err) }),
      );
    const updated = await this.store
      .update(record.id, (r) => (r.state.paused = false))
      .catch(() => undefined);
    if (updated) this.publish(updated, 'unpause');
    return true;
  }

  async stop(ref: string, options: StopOptions = {}): Promise<void> {
    const resolved = this.store.resolve(ref);
    const live = this.liveOf(resolved.id);
    if (live.inFlightStart) await live.inFlightStart;
    const record = this.store.get(resolved.id) ?? resolved;
    const run = live.run;
    if (!run && !live.pendingRestart) throw new NotModifiedError('Container already stopped');
    const signal =
      options.signal !== undefined && options.signal !== ''
        ? parseSignal(options.signal)
        : record.config.stopSignal !== ''
          ? parseSignal(record.config.stopSignal)
          : SIGTERM;
    const timeoutS = options.timeout ?? record.config.stopTimeout ?? DEFAULT_STOP_TIMEOUT_S;
    await this.noteUserSignal(record, live, signal);
    if (!run) {
      // Restarting: no process to signal; the pending restart is dropped (dockerd: no kill event).
      live.backoff.cancel();
      await this.cancelPendingRestart(record.id, live);
      this.publish(record, 'stop');
      return;
    }
    const delivered = await this.resumeForSignal(record, run, signal);
    this.publish(record, 'kill', { signal: String(signal) });
    const sent = run.sandbox
      .signal(signal)
      .catch((err: unknown) => this.log.debug('stop signal failed', { error: String(err) }));
    if (delivered) await sent;
    const stopped = timeoutS < 0 ? (await run.ended, true) : await withinMs(run.ended, timeoutS * 1000);
    if (!stopped) {
      this.log.info('container did not stop in time; killing it', { id: record.id, timeoutS });
      live.backoff.cancel();
      await this.forceKill(record, run);
    }
    // The exit may have been recorded as a restart before the stop cancelled it.
    if (live.backoff.cancelled) await this.cancelPendingRestart(record.id, live);
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
      const resolved = this.store.resolve(ref);
      if (!isValidLinuxSignal(signal))
        throw new SystemError(`The linux daemon does not support signal ${signal}`);
      const live = this.liveOf(resolved.id);
      if (live.inFlightStart) await live.inFlightStart;
      const record = this.store.get(resolved.id) ?? resolved;
      const run = live.run;
      if (!run && !live.pendingRestart) throw new ConflictError(`Container ${record.id} is not running`);
      await this.noteUserSignal(record, live, signal);
      if (!run) {
        // Restarting: nothing to signal; a cancelled restart leaves the container stopped.
        if (live.backoff.cancelled) await this.cancelPendingRestart(record.id, live);
        return;
      }
      const delivered = await this.resumeForSignal(record, run, signal);
      if (signal === SIGKILL) {
        await this.forceKill(record, run);
      } else if (!delivered) {
        this.publish(record, 'kill', { signal: String(signal) });
        void run.sandbox
          .signal(signal)
          .catch((err: unknown) =>
            this.log.warn('signal to a paused container failed', { error: messageOf(err) }),
          );
      } else {
        this.publish(record, 'kill', { signal: String(signal) });
        await run.sandbox.signal(signal);
      }
    } catch (err) {
      throw prefixed(`Cannot kill container: ${ref}: `, err);
    }
  }

  /** Stop (if running) then a user's start; an AutoRemove container is kept across it. */
  async restart(ref: string, options: StopOptions = {}): Promise<void> {
    const record = this.store.resolve(ref);
    const live = this.liveOf(record.id);
    live.keepOnExit = true;
    try {
      await this.stop(record.id, options);
    } catch (err) {
      if (!(err instanceof NotModifiedError)) throw err;
    } finally {
      live.keepOnExit = false;
    }
    await this.start(record.id);
    this.publish(this.store.get(record.id) ?? record, 'restart');
  }

  // ---- pause, unpause --------------------------------------------------------------------------

  /** docker pause: the whole VM stops (QMP stop); dockerd's checks and texts (409). */
  async pause(ref: string): Promise<void> {
    const { id } = this.store.resolve(ref);
    const record = await this.store.withLock(id, async () => {
      const current = this.store.get(id);
      if (!current) throw new NotFoundError(`No such container: ${ref}`);
      const run = this.live.get(id)?.run;
      if (!current.state.running) throw new ConflictError(`Container ${id} is not running`);
      if (current.state.paused) throw new ConflictError(`Container ${id} is already paused`);
      if (current.state.restarting || !run) {
        throw new ConflictError(`Container ${id} is restarting, wait until the container is running`);
      }
      try {
        await run.sandbox.pause();
      } catch (err) {
        throw new SystemError(`Cannot pause container ${id}: ${messageOf(err)}`, { cause: err });
      }
      return this.store.updateLocked(id, (r) => (r.state.paused = true));
    });
    this.publish(record, 'pause');
  }

  /** docker unpause: the VM runs again (QMP cont). */
  async unpause(ref: string): Promise<void> {
    const { id } = this.store.resolve(ref);
    const record = await this.store.withLock(id, async () => {
      const current = this.store.get(id);
      if (!current) throw new NotFoundError(`No such container: ${ref}`);
      const run = this.live.get(id)?.run;
      if (!current.state.paused || !run) throw new ConflictError(`Container ${id} is not paused`);
      try {
        await run.sandbox.resume();
      } catch (err) {
        throw new SystemError(`Cannot unpause container ${id}: ${messageOf(err)}`, { cause: err });
      }
      return this.store.updateLocked(id, (r) => (r.state.paused = false));
    });
    this.publish(record, 'unpause');
  }

  async resize(ref: string, height: number, width: number): Promise<void> {
    const { record, run } = this.runningRun(ref);
    if (!run) throw new ConflictError(`Container ${record.id} is not running`);
    // A container without a tty accepts it too (dockerd: the shim ignores it), with the event. A
    // paused VM cannot answer: the size is not applied then (the agent would only time out).
    if (!record.state.paused) await run.sandbox.resize(height, width);
    this.publish(record, 'resize', { height: String(height), width: String(width) });
  }

  private runningRun(ref: string): { record: ContainerRecord; run: Run | undefined } {
    const record = this.store.resolve(ref);
    return { record, run: this.live.get(record.id)?.run };
  }

  // ---- rename, update -------------------------------------------------------------------------

  async rename(ref: string, newName: string): Promise<void> {
    if (ref === '' || newName === '') {
      throw new InvalidParameterError('Neither old nor new names may be empty');
    }
    const name = newName.startsWith('/') ? newName : `/${newName}`;
    const { id } = this.store.resolve(ref);
    const { before, after } = await this.store.withLock(id, async () => {
      const current = this.store.get(id);
      if (!current) throw new NotFoundError(`No such container: ${ref}`);
      if (current.name === name) {
        throw new InvalidParameterError('Renaming a container with the same name as its current name');
      }
      try {
        if (!isValidContainerName(name.slice(1))) {
          throw new InvalidParameterError(
            `Invalid container name (${name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`,
          );
        }
        return { before: current, after: await this.store.renameLocked(id, name) };
      } catch (err) {
        throw prefixed('Error when allocating new name: ', err);
      }
    });
    this.publish(after, 'rename', { oldName: before.name });
  }

  /**
   * `docker update`: restart policy and resources, with dockerd's checks. The runtime cannot
   * resize a running VM, so resources take effect at the next start; the policy at the next exit.
   */
  async update(ref: string, request: UpdateContainerRequest): Promise<UpdateContainerResult> {
    const policy = request.restartPolicy;
    if (policy && policy.name !== '') validateRestartPolicy(policy);
    validateResources(request.resources.memory ?? 0, request.resources.nanoCpus ?? 0, request.resources);
    const { id } = this.store.resolve(ref);
    const updated = await this.store.withLock(id, async () => {
      const current = this.store.get(id);
      if (!current) throw new NotFoundError(`No such container: ${ref}`);
      if (current.state.removalInProgress || current.state.dead) {
        throw new ConflictError(
          `Cannot update container ${id}: container is marked for removal and cannot be "update"`,
        );
      }
      let hostConfig: HostConfig;
      try {
        hostConfig = applyUpdate(current.hostConfig, request);
      } catch (err) {
        throw prefixed(`Cannot update container ${id}: `, err);
      }
      return this.store.updateLocked(id, (r) => (r.hostConfig = hostConfig));
    });
    this.publish(updated, 'update');
    return { warnings: null };
  }

  // ---- remove ---------------------------------------------------------------------------------

  async remove(ref: string, options: RemoveOptions): Promise<void> {
    const resolved = this.store.resolve(ref);
    const live = this.liveOf(resolved.id);
    if (live.removal) return live.removal;
    // As dockerd (which waits for the container's lock): judge the state once a start is over.
    if (!options.force && live.inFlightStart) await live.inFlightStart;
    if (live.removal) return live.removal;
    const record = this.store.get(resolved.id) ?? resolved;
    if (live.run || live.pendingRestart || record.state.running) {
      if (!options.force) {
        const state = statusOf(record.state);
        const procedure = 'Stop the container before attempting removal or force remove';
        throw new ConflictError(
          `You cannot remove a ${state} container ${record.id}. ` +
            (state === 'paused' ? `Unpause and then ${procedure.toLowerCase()}` : procedure),
        );
      }
    }
    await this.removeNow(record.id);
  }

  /** Destroys a live sandbox, then deletes the container; idempotent while in progress. */
  private removeNow(id: string): Promise<void> {
    const live = this.liveOf(id);
    if (live.removal) return live.removal;
    live.backoff.cancel();
    live.removal = (async () => {
      if (live.pendingRestart) {
        this.clock.clearTimeout(live.pendingRestart.handle);
        live.pendingRestart = undefined;
      }
      if (live.inFlightStart) await live.inFlightStart;
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

  /**
   * `docker container prune`: removes every container that is not running (nor restarting)
   * created before `until` and matching the label filters.
   */
  async prune(filters: FilterArgs): Promise<PruneContainersResult> {
    validateFilterKeys(filters, PRUNE_FILTERS);
    let untilNs: bigint | undefined;
    const until = filters.until ?? [];
    if (until.length > 1) throw new SystemError('more than one until filter specified');
    if (until[0] !== undefined) untilNs = resolveTimestamp(until[0], nowNs());
    if (this.pruning) throw new ConflictError('a prune operation is already running');
    this.pruning = true;
    try {
      const deleted: string[] = [];
      let reclaimed = 0;
      const records = this.store
        .all()
        .sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
      for (const record of records) {
        const live = this.live.get(record.id);
        if (record.state.running || live?.run || live?.inFlightStart || live?.pendingRestart) continue;
        if (untilNs !== undefined && (parseRFC3339Nano(record.created) ?? 0n) > untilNs) continue;
        const labels = record.config.labels ?? {};
        if (!matchKVList(filters, 'label', labels)) continue;
        if ((filters['label!'] ?? []).length > 0 && matchKVList(filters, 'label!', labels)) continue;
        const size = await dirSize(path.join(this.store.layerDirOf(record.id), 'upper'));
        try {
          await this.remove(record.id, { force: false, removeVolumes: false });
        } catch (err) {
          this.log.warn('failed to prune container', { id: record.id, error: messageOf(err) });
          continue;
        }
        deleted.push(record.id);
        reclaimed += size;
      }
      this.events.publish('container', 'prune', { id: '', attributes: { reclaimed: String(reclaimed) } });
      return { containersDeleted: deleted.length > 0 ? deleted : null, spaceReclaimed: reclaimed };
    } finally {
      this.pruning = false;
    }
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

  // ---- exec, top, stats (daemon/exec.ts, daemon/top-stats.ts) ------------------------------------

  /**
   * The running container an exec, top or stats goes to, as dockerd's getActiveContainer: NotFound,
   * else Conflict when it is paused, restarting or not running.
   */
  execTarget(ref: string): { id: string; sandbox: RunningSandbox; config: ContainerRecord['config'] } {
    const record = this.store.resolve(ref);
    if (record.state.paused) {
      throw new ConflictError(`Container ${record.id} is paused, unpause the container before exec`);
    }
    if (record.state.restarting) {
      throw new ConflictError(`Container ${record.id} is restarting, wait until the container is running`);
    }
    const run = this.live.get(record.id)?.run;
    if (!record.state.running || !run) throw new ConflictError(`Container ${record.id} is not running`);
    return { id: record.id, sandbox: run.sandbox, config: record.config };
  }

  /** What the healthchecks (daemon/health.ts) read of a container; undefined once it is gone. */
  healthTarget(
    id: string,
  ):
    | { config: ContainerConfig; startedAt: string; running: boolean; paused: boolean; health?: HealthState }
    | undefined {
    const record = this.store.get(id);
    if (!record) return undefined;
    const { running, paused, startedAt, health } = record.state;
    return { config: record.config, startedAt, running, paused, health };
  }

  /**
   * Records State.Health; dropped when the container is gone, and for `when: 'running'` (probe
   * results) once it no longer runs, for `'stopped'` (the monitor's end) once it runs again.
   */
  async setHealth(id: string, health: HealthState, when: 'running' | 'stopped' = 'running'): Promise<void> {
    await this.store.withLock(id, async () => {
      const record = this.store.get(id);
      if (!record) return;
      const probing = record.state.running && !record.state.paused;
      if (when === 'running' ? !record.state.running : probing) return;
      await this.store.updateLocked(id, (r) => {
        r.state.health = health;
      });
    });
  }

  /** A container event (exec_create …) with the container's attributes and `extra`. */
  publishContainerEvent(containerId: string, action: string, extra: Record<string, string>): void {
    const record = this.store.get(containerId);
    if (record) this.publish(record, action, extra);
  }

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
      stdin: wantsStdin,
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
      detach: (byKeys?: boolean) => {
        if (detached) return;
        detached = true;
        if (attacher) hub.remove(attacher);
        const current = byKeys ? this.store.get(id) : undefined;
        if (current) this.publish(current, 'detach');
      },
    };
  }

  private async replay(id: string, live: Live, options: AttachOptions, sink: AttachSink): Promise<void> {
    const files = await this.logFilesOf(id, live);
    for await (const entry of readLogEntries(files, { stdout: options.stdout, stderr: options.stderr })) {
      if (!sink.write({ stream: entry.stream, data: entry.data })) await sink.drained();
    }
  }

  /** The container's log files as they are now (between two writes when a writer is open). */
  private logFilesOf(id: string, live: Live): Promise<LogFiles> {
    if (live.writer) return live.writer.snapshot();
    const record = this.store.get(id);
    const maxFiles = record ? readOptionsOf(record.hostConfig.logConfig.config).maxFiles : 1;
    return openLogFiles(this.store.logPathOf(id), maxFiles);
  }

  // ---- logs -----------------------------------------------------------------------------------

  async logs(ref: string, options: LogsOptions, signal?: AbortSignal): Promise<LogsResult> {
    const record = this.store.resolve(ref);
    if (!options.stdout && !options.stderr) {
      throw new InvalidParameterError('Bad parameters: you must choose at least one stream');
    }
    const id = record.id;
    const live = this.liveOf(id);
    const writer = live.writer;
    const follow = options.follow && writer !== undefined && (live.run !== undefined || live.starting);
    const untilNs = options.untilNs;
    const filesOf = (): Promise<LogFiles> => this.logFilesOf(id, live);
    const entries = async function* (): AsyncGenerator<LogEntry> {
      let untilTimer: NodeJS.Timeout | undefined;
      let sub: LogSubscription | undefined;
      let aborted = false;
      const onAbort = (): void => {
        aborted = true;
        sub?.close();
      };
      signal?.addEventListener('abort', onAbort);
      try {
        let files: LogFiles;
        if (follow && writer) {
          // Files and subscription in one step: every entry once, across rotations too.
          ({ files, subscription: sub } = await writer.follow());
          if (aborted) sub.close();
        } else {
          files = await filesOf();
        }
        yield* readLogEntries(files, options);
        const live = sub;
        if (!live) return;
        if (untilNs !== undefined) {
          const ms = Number((untilNs - nowNs()) / 1_000_000n);
          if (ms <= 0) return;
          untilTimer = setTimeout(() => live.close(), ms);
        }
        for (;;) {
          const entry = await live.next();
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

  // ---- filesystem access (cp, export, diff, commit: daemon/archive.ts, daemon/commit.ts) -------

  /**
   * Runs `fn` with the container's filesystem under the container lock, so no start, exit
   * bookkeeping or removal overlaps it (dockerd holds the container lock for archive calls too):
   * a running container's sandbox, or, when it is not running, what is needed to mount its
   * overlay privately on the host. `fn` must finish its work (a stream included) before it resolves.
   */
  async withFilesystem<T>(ref: string, fn: (fs: ContainerFilesystem) => Promise<T>): Promise<T> {
    const { id } = this.store.resolve(ref);
    return this.store.withLock(id, async () => {
      const record = this.store.get(id);
      if (!record) throw new NotFoundError(`No such container: ${ref}`);
      const live = this.liveOf(id);
      if (live.removal || record.state.removalInProgress) {
        throw new ConflictError(`You cannot access a container that is being removed: ${ref}`);
      }
      const containerLayerDir = this.store.layerDirOf(id);
      const base = { record, containerLayerDir, upperDir: path.join(containerLayerDir, 'upper') };
      const image = await this.images.get(record.imageId).catch((err: unknown) => {
        throw new NotFoundError(`No such image: ${record.imageId}`, { cause: err });
      });
      const layerDirs = await this.images.layerDirs(image);
      return fn({
        ...base,
        layerDirs,
        execRoot: this.execRoot,
        ...(live.run ? { sandbox: live.run.sandbox } : {}),
      });
    });
  }

  // ---- shutdown -------------------------------------------------------------------------------

  /**
   * Drops scheduled restarts (those containers stay stopped, and come back by their policy on the
   * next daemon start), lets starts in flight finish, then destroys every running sandbox and
   * waits (bounded) for their exits to be recorded.
   */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    this.shuttingDown = true;
    for (const [id, live] of this.live) await this.cancelPendingRestart(id, live);
    const starts = [...this.live.values()].map((live) => live.inFlightStart).filter((p) => p !== undefined);
    await withinMs(Promise.all(starts), timeoutMs);
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

function numberOr0(v: unknown): number {
  return typeof v === 'number' ? v : 0;
}

/** The HostConfig fields the OCI spec applies in the VM, read from the wire fields kept verbatim. */
export function containerOptionsOf(hostConfig: HostConfig): ContainerOptions {
  const p = hostConfig.passthrough;
  const strings = (v: unknown): string[] =>
    Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  const tmpfs: Record<string, string> = {};
  if (p.Tmpfs && typeof p.Tmpfs === 'object' && !Array.isArray(p.Tmpfs)) {
    for (const [dest, opts] of Object.entries(p.Tmpfs as Record<string, unknown>)) {
      tmpfs[dest] = typeof opts === 'string' ? opts : '';
    }
  }
  const ulimits = Array.isArray(p.Ulimits)
    ? (p.Ulimits as unknown[]).map((u) => {
        const o = (u ?? {}) as Record<string, unknown>;
        return { name: String(o.Name ?? ''), soft: Number(o.Soft ?? 0), hard: Number(o.Hard ?? 0) };
      })
    : [];
  return {
    readonlyRootfs: p.ReadonlyRootfs === true,
    shmSizeBytes: typeof p.ShmSize === 'number' ? p.ShmSize : 0,
    tmpfs,
    capAdd: strings(p.CapAdd),
    capDrop: strings(p.CapDrop),
    privileged: p.Privileged === true,
    ulimits,
    init: p.Init === true,
    memoryLimitBytes: hostConfig.memory > 0 ? hostConfig.memory : 0,
  };
}

/**
 * Whether a user's signal ends the run as dockerd counts it (killWithSignal's ExitOnNext): SIGKILL,
 * the container's stop signal, or any signal when none is configured.
 */
function endsRun(record: ContainerRecord, signal: number): boolean {
  let stopSignal: number | undefined;
  try {
    stopSignal = record.config.stopSignal !== '' ? parseSignal(record.config.stopSignal) : undefined;
  } catch {
    stopSignal = undefined;
  }
  return stopSignal === undefined || signal === SIGKILL || signal === stopSignal;
}

/** dockerd's verifyContainerResources checks that apply to a VM (create and update). */
function validateResources(memory: number, nanoCpus: number, update?: ResourceUpdate): void {
  if (memory !== 0 && memory < 6 * 1024 * 1024)
    throw new InvalidParameterError('Minimum memory limit allowed is 6MB');
  const swap = update?.memorySwap ?? 0;
  if (memory > 0 && swap > 0 && swap < memory) {
    throw new InvalidParameterError('Minimum memoryswap limit should be larger than memory limit, see usage');
  }
  const reservation = update?.memoryReservation ?? 0;
  if (memory > 0 && reservation > 0 && memory < reservation) {
    throw new InvalidParameterError(
      'Minimum memory limit can not be less than memory reservation limit, see usage',
    );
  }
  const ncpu = os.cpus().length;
  if (nanoCpus < 0 || nanoCpus > ncpu * 1e9) {
    throw new InvalidParameterError(
      `Range of CPUs is from 0.01 to ${ncpu}.00, as there are only ${ncpu} CPUs available`,
    );
  }
}

/** What dockerd fills in on create: the runtime, json-file, MemorySwap = 2 × Memory. */
function normalizeHostConfig(hostConfig: HostConfig): HostConfig {
  const passthrough = { ...hostConfig.passthrough };
  const swap = passthrough.MemorySwap;
  if (hostConfig.memory > 0 && (swap === undefined || swap === null || swap === 0)) {
    passthrough.MemorySwap = hostConfig.memory * 2;
  }
  return {
    ...hostConfig,
    runtime: hostConfig.runtime || RUNTIME_NAME,
    logConfig: { type: 'json-file', config: hostConfig.logConfig.config },
    passthrough,
  };
}

const PRUNE_FILTERS = new Set(['label', 'label!', 'until']);

/** The host config fields `docker update` changes besides Memory and NanoCpus, by wire name. */
const UPDATE_FIELDS: Array<[keyof ResourceUpdate, string]> = [
  ['blkioWeight', 'BlkioWeight'],
  ['cpuShares', 'CpuShares'],
  ['cpuPeriod', 'CpuPeriod'],
  ['cpuQuota', 'CpuQuota'],
  ['cpusetCpus', 'CpusetCpus'],
  ['cpusetMems', 'CpusetMems'],
  ['memorySwap', 'MemorySwap'],
  ['memoryReservation', 'MemoryReservation'],
  ['kernelMemory', 'KernelMemory'],
  ['cpuRealtimePeriod', 'CpuRealtimePeriod'],
  ['cpuRealtimeRuntime', 'CpuRealtimeRuntime'],
];

/**
 * dockerd's Container.UpdateContainer on a copy: conflicts are 409s; zero values leave fields as
 * they are; the restart policy changes only when named (not with AutoRemove).
 */
function applyUpdate(current: HostConfig, request: UpdateContainerRequest): HostConfig {
  const next = structuredClone(current);
  const p = next.passthrough;
  const r = request.resources;
  const num = (key: string): number => (typeof p[key] === 'number' ? p[key] : 0);
  const conflict = (message: string): never => {
    throw new ConflictError(`Conflicting options: ${message}`);
  };
  if ((r.nanoCpus ?? 0) > 0 && num('CpuPeriod') > 0)
    conflict('Nano CPUs cannot be updated as CPU Period has already been set');
  if ((r.nanoCpus ?? 0) > 0 && num('CpuQuota') > 0)
    conflict('Nano CPUs cannot be updated as CPU Quota has already been set');
  if ((r.cpuPeriod ?? 0) > 0 && current.nanoCpus > 0)
    conflict('CPU Period cannot be updated as NanoCPUs has already been set');
  if ((r.cpuQuota ?? 0) > 0 && current.nanoCpus > 0)
    conflict('CPU Quota cannot be updated as NanoCPUs has already been set');
  if (r.memory !== undefined && r.memory !== 0) {
    if (r.memory > num('MemorySwap') && (r.memorySwap ?? 0) === 0) {
      throw new ConflictError(
        'Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time',
      );
    }
    next.memory = r.memory;
  }
  if (r.nanoCpus !== undefined && r.nanoCpus !== 0) next.nanoCpus = r.nanoCpus;
  for (const [field, wire] of UPDATE_FIELDS) {
    const value = r[field];
    if (value !== undefined && value !== 0 && value !== '') p[wire] = value;
  }
  if (r.pidsLimit !== undefined) p.PidsLimit = r.pidsLimit;
  const policy = request.restartPolicy;
  if (policy && policy.name !== '') {
    if (current.autoRemove && !isNoRestart(policy)) {
      throw new ConflictError(
        'Restart policy cannot be updated because AutoRemove is enabled for the container',
      );
    }
    next.restartPolicy = { name: policy.name, maximumRetryCount: policy.maximumRetryCount };
  }
  return next;
}
