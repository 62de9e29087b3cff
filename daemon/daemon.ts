/**
 * The daemon: builds the stores, the events bus and the container lifecycle once, around the
 * image service and the sandbox runtime it is given, and offers the operations the API needs.
 * No singletons: everything is created here and passed in.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { writeFileAtomic } from '../common/atomic-write';
import type { Logger } from '../common/logger';
import type { ImageCommitter } from '../images/commit';
import type { ImageManagementService, PullOptions, PushOptions, RegistryAuth } from '../images/types';
import type { SandboxRuntime } from '../runtime/types';
import type { DaemonConfig } from './config';
import {
  clearStaleArchiveMounts,
  ContainerArchive,
  type ArchiveResult,
  type ExtractOptions as ArchiveExtractOptions,
  type FilesystemChange,
  type PathStatView,
} from './archive';
import { ContainerCommitter, type CommitOptions } from './commit';
import { ContainerService, RUNTIME_NAME } from './containers';
import { ExecService, type ExecCreateOptions, type ExecStreams, type ExecView } from './exec';
import { execProbes, HealthcheckService } from './health';
import { ContainerMonitor, type StatsSample, type TopResult } from './top-stats';
import {
  DaemonImages,
  type DiskUsage,
  type DiskUsageOptions,
  type HistoryEntry,
  type ImageDeleteItem,
  type ImageListOptions,
  type ImageRemoveOptions,
  type ImageSummary,
  type ImportOptions,
  type LoadProgress,
  type LoadResult,
  type LoginResult,
  type PruneReport,
  type PushProgress,
} from './daemon-images';
import { EventsBus } from './events';
import { registryLogin } from './login-images';
import { ContainerStore } from './store';
import { nowNs } from './time';
import { BUILD_TIME, CAPSULE_VERSION, GIT_COMMIT } from './version';
import type {
  AttachOptions,
  AttachSession,
  ContainerView,
  CreateContainerRequest,
  CreateContainerResult,
  DaemonEvent,
  EventsOptions,
  FilterArgs,
  ImageRecord,
  PruneContainersResult,
  UpdateContainerRequest,
  UpdateContainerResult,
  ListContainersOptions,
  LogsOptions,
  LogsResult,
  PullProgress,
  RemoveOptions,
  StopOptions,
  SystemInfo,
  VersionInfo,
  WaitCondition,
  WaitHandle,
} from './types';

export interface DaemonOptions {
  config: DaemonConfig;
  log: Logger;
  images: ImageManagementService & ImageCommitter;
  runtime: SandboxRuntime;
}

export { RUNTIME_NAME };

function osRelease(): { prettyName: string; versionId: string } {
  try {
    const text = readFileSync('/etc/os-release', 'utf8');
    const field = (key: string): string => {
      const m = new RegExp(`^${key}=(.*)$`, 'm').exec(text);
      return (m?.[1] ?? '').replace(/^"(.*)"$/, '$1');
    };
    return { prettyName: field('PRETTY_NAME') || 'Linux', versionId: field('VERSION_ID') };
  } catch {
    return { prettyName: 'Linux', versionId: '' };
  }
}

export interface EventSubscription {
  past: DaemonEvent[];
  close(): void;
}

export class Daemon {
  private readonly hostOs = osRelease();
  private readonly archive: ContainerArchive;
  private readonly committer: ContainerCommitter;
  private readonly execs: ExecService;
  private readonly monitor: ContainerMonitor;
  private readonly healthchecks: HealthcheckService;

  constructor(
    readonly config: DaemonConfig,
    private readonly log: Logger,
    private readonly images: ImageManagementService & ImageCommitter,
    private readonly runtime: SandboxRuntime,
    private readonly containers: ContainerService,
    private readonly events: EventsBus,
    private readonly engineId: string,
    private readonly imageOps: DaemonImages,
  ) {
    this.archive = new ContainerArchive(containers, log.child({ component: 'archive' }));
    this.committer = new ContainerCommitter(
      containers,
      images,
      {
        publishContainerEvent: (id, action, extra) => containers.publishContainerEvent(id, action, extra),
        publishImageEvent: (action, id, attributes) => events.publish('image', action, { id, attributes }),
      },
      CAPSULE_VERSION,
      log.child({ component: 'commit' }),
    );
    this.execs = new ExecService(containers, log.child({ component: 'exec' }));
    this.monitor = new ContainerMonitor(containers);
    this.healthchecks = new HealthcheckService(
      events,
      containers,
      execProbes(
        this.execs,
        (id) => containers.healthTarget(id)?.config,
        (id) => {
          try {
            return containers.execTarget(id).sandbox.processExited;
          } catch {
            return undefined; // no longer running
          }
        },
      ),
      log.child({ component: 'health' }),
    );
    this.healthchecks.start();
  }

  // ---- containers -----------------------------------------------------------------------------

  containerCreate(request: CreateContainerRequest): Promise<CreateContainerResult> {
    return this.containers.create(request);
  }

  containerInspect(ref: string): ContainerView {
    const view = this.containers.inspect(ref);
    return { ...view, execIds: this.execs.execIdsOf(view.id) };
  }

  containerList(options: ListContainersOptions): Promise<ContainerView[]> {
    return this.containers.list(options);
  }

  containerStart(ref: string): Promise<void> {
    return this.containers.start(ref);
  }

  containerStop(ref: string, options: StopOptions): Promise<void> {
    return this.containers.stop(ref, options);
  }

  containerRestart(ref: string, options: StopOptions): Promise<void> {
    return this.containers.restart(ref, options);
  }

  containerKill(ref: string, signal: string | undefined): Promise<void> {
    return this.containers.kill(ref, signal);
  }

  containerPause(ref: string): Promise<void> {
    return this.containers.pause(ref);
  }

  containerUnpause(ref: string): Promise<void> {
    return this.containers.unpause(ref);
  }

  async containerRemove(ref: string, options: RemoveOptions): Promise<void> {
    const { id } = this.containers.inspect(ref);
    await this.containers.remove(ref, options);
    this.execs.forgetContainer(id);
  }

  // ---- exec, top, stats -----------------------------------------------------------------------

  containerExecCreate(ref: string, options: ExecCreateOptions): string {
    return this.execs.create(ref, options);
  }

  execExists(id: string): void {
    this.execs.exists(id);
  }

  execStart(id: string, streams?: ExecStreams, consoleSize?: [number, number]): Promise<void> {
    return this.execs.start(id, streams, consoleSize);
  }

  execInspect(id: string): ExecView {
    return this.execs.inspect(id);
  }

  execResize(id: string, height: number, width: number): Promise<void> {
    return this.execs.resize(id, height, width);
  }

  containerTop(ref: string, psArgs?: string): Promise<TopResult> {
    return this.monitor.top(ref, psArgs);
  }

  containerStats(
    ref: string,
    options: { stream: boolean; oneShot: boolean },
    signal?: AbortSignal,
  ): AsyncGenerator<StatsSample> {
    return this.monitor.stats(ref, options, signal);
  }

  containerWait(ref: string, condition: WaitCondition): WaitHandle {
    return this.containers.wait(ref, condition);
  }

  containerAttach(ref: string, options: AttachOptions): AttachSession {
    return this.containers.attach(ref, options);
  }

  containerLogs(ref: string, options: LogsOptions, signal?: AbortSignal): Promise<LogsResult> {
    return this.containers.logs(ref, options, signal);
  }

  containerResize(ref: string, height: number, width: number): Promise<void> {
    return this.containers.resize(ref, height, width);
  }

  containerRename(ref: string, newName: string): Promise<void> {
    return this.containers.rename(ref, newName);
  }

  containerUpdate(ref: string, request: UpdateContainerRequest): Promise<UpdateContainerResult> {
    return this.containers.update(ref, request);
  }

  containerPrune(filters: FilterArgs): Promise<PruneContainersResult> {
    return this.containers.prune(filters);
  }

  // ---- filesystem: cp, export, diff (daemon/archive.ts) --------------------------------------

  containerStatPath(ref: string, p: string): Promise<PathStatView> {
    return this.archive.statPath(ref, p);
  }

  containerArchive(ref: string, p: string): Promise<ArchiveResult> {
    return this.archive.archive(ref, p);
  }

  containerExtract(
    ref: string,
    p: string,
    tar: AsyncIterable<Uint8Array>,
    options: ArchiveExtractOptions,
  ): Promise<void> {
    return this.archive.extract(ref, p, tar, options);
  }

  containerExport(ref: string): Promise<Readable> {
    return this.archive.export(ref);
  }

  containerChanges(ref: string): Promise<FilesystemChange[]> {
    return this.archive.changes(ref);
  }

  /** docker commit (daemon/commit.ts): returns the new image id. */
  containerCommit(options: CommitOptions): Promise<string> {
    return this.committer.commit(options);
  }

  // ---- images (daemon-images.ts: events, in-use checks, login) ------------------------------

  imagePull(
    reference: string,
    options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord> {
    return this.imageOps.pull(reference, options, onProgress);
  }

  imageList(options: ImageListOptions): Promise<ImageSummary[]> {
    return this.imageOps.list(options);
  }

  imageInspect(reference: string): Promise<ImageRecord> {
    return this.imageOps.inspect(reference);
  }

  imageHistory(reference: string): Promise<HistoryEntry[]> {
    return this.imageOps.history(reference);
  }

  imageTag(source: string, repository: string, tag?: string): Promise<string> {
    return this.imageOps.tag(source, repository, tag);
  }

  imageRemove(reference: string, options: ImageRemoveOptions): Promise<ImageDeleteItem[]> {
    return this.imageOps.remove(reference, options);
  }

  imagePrune(filters: FilterArgs): Promise<PruneReport> {
    return this.imageOps.prune(filters);
  }

  imagePush(reference: string, options: PushOptions, onProgress: (p: PushProgress) => void): Promise<void> {
    return this.imageOps.push(reference, options, onProgress);
  }

  imageSave(references: string[]): Promise<Readable> {
    return this.imageOps.save(references);
  }

  imageLoad(
    archive: AsyncIterable<Uint8Array>,
    options: { quiet: boolean; signal?: AbortSignal },
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult> {
    return this.imageOps.load(archive, options, onProgress);
  }

  imageImport(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord> {
    return this.imageOps.import(tarball, options);
  }

  registryLogin(auth: RegistryAuth, signal?: AbortSignal): Promise<LoginResult> {
    return this.imageOps.login(auth, signal);
  }

  /** `GET /system/df`: images from the image service, containers from the store, no volumes yet. */
  async systemDiskUsage(options: DiskUsageOptions): Promise<DiskUsage> {
    const images = options.images ? await this.imageOps.diskUsage() : undefined;
    const containers = options.containers
      ? await this.containers.list({ all: true, limit: 0, size: true, filters: {} })
      : null;
    return {
      layersSize: images?.layersSize ?? 0,
      images: images?.images ?? null,
      containers,
      volumes: options.volumes ? [] : null,
    };
  }

  // ---- system ---------------------------------------------------------------------------------

  async systemInfo(): Promise<SystemInfo> {
    const counts = this.containers.counts();
    const runtime = this.runtime.info();
    const images = await this.images.list().then(
      (l) => l.length,
      () => 0,
    );
    return {
      id: this.engineId,
      name: os.hostname(),
      serverVersion: CAPSULE_VERSION,
      containers: counts.total,
      containersRunning: counts.running,
      containersPaused: counts.paused,
      containersStopped: counts.stopped,
      images,
      ncpu: os.cpus().length,
      memTotal: os.totalmem(),
      operatingSystem: this.hostOs.prettyName,
      osVersion: this.hostOs.versionId,
      kernelVersion: runtime.guestKernelRelease,
      hostKernelVersion: os.release(),
      architecture: os.machine(),
      dataRoot: this.config.dataRoot,
      accel: runtime.accel,
      hypervisor: runtime.hypervisor,
      runtimeName: RUNTIME_NAME,
      insecureRegistries: this.config.insecureRegistries,
      registryMirrors: this.config.registryMirrors,
      debug: this.config.debug || this.config.logLevel === 'debug',
      systemTimeNs: nowNs(),
      eventsListeners: this.events.listeners,
    };
  }

  systemVersion(): VersionInfo {
    const runtime = this.runtime.info();
    return {
      version: CAPSULE_VERSION,
      gitCommit: GIT_COMMIT,
      buildTime: BUILD_TIME,
      kernelVersion: runtime.guestKernelRelease,
      os: 'linux',
      arch: os.arch() === 'x64' ? 'amd64' : os.arch(),
      nodeVersion: process.version,
      hypervisor: runtime.hypervisor,
      accel: runtime.accel,
    };
  }

  /** Buffered events (when `since` or `until` is given), then live ones, matching the filters. */
  subscribeEvents(options: EventsOptions, onEvent: (e: DaemonEvent) => void): EventSubscription {
    return this.events.subscribe(options, onEvent);
  }

  /** Stops every container's sandbox and records their exits. */
  async shutdown(): Promise<void> {
    this.log.info('daemon shutting down');
    await this.healthchecks.shutdown();
    await this.containers.shutdown();
  }
}

async function loadEngineId(dataRoot: string): Promise<string> {
  const file = path.join(dataRoot, 'engine-id');
  try {
    const id = (await fs.readFile(file, 'utf8')).trim();
    if (id) return id;
  } catch {
    // first start
  }
  const id = randomUUID();
  await writeFileAtomic(file, id + '\n', 0o600);
  return id;
}

export async function createDaemon(options: DaemonOptions): Promise<Daemon> {
  const { config, log } = options;
  await fs.mkdir(config.dataRoot, { recursive: true, mode: 0o711 });
  await fs.mkdir(config.execRoot, { recursive: true, mode: 0o700 });
  const events = new EventsBus();
  const store = new ContainerStore(
    path.join(config.dataRoot, 'containers'),
    log.child({ component: 'store' }),
  );
  const containers = new ContainerService({
    store,
    images: options.images,
    runtime: options.runtime,
    events,
    log: log.child({ component: 'containers' }),
    execRoot: config.execRoot,
    defaultLogOptions: config.logOpts,
  });
  await clearStaleArchiveMounts(config.execRoot, log);
  await containers.init();
  const engineId = await loadEngineId(config.dataRoot);
  const imageLog = log.child({ component: 'images' });
  const imageOps = new DaemonImages({
    images: options.images,
    events,
    containers: () => store.all(),
    log: imageLog,
    login: (auth, signal) =>
      registryLogin(auth, {
        log: imageLog,
        insecureRegistries: config.insecureRegistries,
        userAgent: `capsule/${CAPSULE_VERSION}`,
        ...(signal ? { signal } : {}),
      }),
  });
  return new Daemon(config, log, options.images, options.runtime, containers, events, engineId, imageOps);
}
