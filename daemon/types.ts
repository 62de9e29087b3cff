/**
 * The daemon's domain model: containers, their state, logs, events and the system view, in the
 * engine's own terms (camelCase). The API translates these to and from Docker's wire shapes at
 * its edge (api/types); nothing here knows about HTTP.
 */
export type { ImageRecord, PullProgress, RegistryAuth } from '../images/types';

export interface HealthcheckConfig {
  test?: string[];
  /** Nanoseconds, as Docker stores them; 0 or absent = default. */
  interval?: number;
  timeout?: number;
  startPeriod?: number;
  retries?: number;
}

export type HealthStatus = 'starting' | 'healthy' | 'unhealthy';

/** One probe's result in State.Health.Log (moby `types.HealthcheckResult`). */
export interface HealthcheckResult {
  /** RFC3339Nano. */
  start: string;
  end: string;
  exitCode: number;
  output: string;
}

/** State.Health (moby `types.Health`): present once a container with a healthcheck started. */
export interface HealthState {
  status: HealthStatus;
  failingStreak: number;
  log: HealthcheckResult[];
}

/** Docker's container Config, after the image config was merged in (moby `container.Config`). */
export interface ContainerConfig {
  hostname: string;
  domainname: string;
  user: string;
  attachStdin: boolean;
  attachStdout: boolean;
  attachStderr: boolean;
  exposedPorts: Record<string, object> | null;
  tty: boolean;
  openStdin: boolean;
  stdinOnce: boolean;
  env: string[] | null;
  cmd: string[] | null;
  healthcheck: HealthcheckConfig | null;
  argsEscaped: boolean;
  /** The image as the client named it ("busybox", "busybox:latest", an id …). */
  image: string;
  volumes: Record<string, object> | null;
  workingDir: string;
  entrypoint: string[] | null;
  networkDisabled: boolean;
  macAddress: string;
  onBuild: string[] | null;
  labels: Record<string, string> | null;
  stopSignal: string;
  /** Seconds; null = the daemon default (10 s). */
  stopTimeout: number | null;
  shell: string[] | null;
}

export interface PortBinding {
  hostIp: string;
  hostPort: string;
}

export interface RestartPolicy {
  name: string;
  maximumRetryCount: number;
}

/**
 * The host config: the fields the daemon interprets by name; every other wire field the client
 * sent is kept verbatim in `passthrough` so that inspect round-trips it.
 */
export interface HostConfig {
  autoRemove: boolean;
  restartPolicy: RestartPolicy;
  networkMode: string;
  portBindings: Record<string, PortBinding[] | null>;
  binds: string[] | null;
  consoleSize: [number, number];
  /** Bytes; 0 = the runtime default. */
  memory: number;
  /** CPU quota in units of 1e-9 CPUs; 0 = the runtime default. */
  nanoCpus: number;
  logConfig: { type: string; config: Record<string, string> };
  runtime: string;
  passthrough: Record<string, unknown>;
}

/** The create request, as the API decoded it. */
export interface CreateContainerRequest {
  /** "" = generate one. */
  name: string;
  config: ContainerConfig;
  hostConfig: HostConfig;
}

export interface CreateContainerResult {
  id: string;
  warnings: string[];
}

/** Persisted state (moby `container.State`); the status string is derived from it. */
export interface ContainerState {
  running: boolean;
  paused: boolean;
  restarting: boolean;
  oomKilled: boolean;
  dead: boolean;
  removalInProgress: boolean;
  /** The VM's pid while running, else 0. */
  pid: number;
  exitCode: number;
  error: string;
  /** RFC3339Nano; ZERO_TIME when never started / never finished. */
  startedAt: string;
  finishedAt: string;
  /** Set while the container has a healthcheck (daemon/health.ts); absent otherwise. */
  health?: HealthState;
}

export type ContainerStatus =
  'created' | 'running' | 'paused' | 'restarting' | 'removing' | 'exited' | 'dead';

/** What config.v2.json holds for one container. */
export interface ContainerRecord {
  id: string;
  /** With the leading slash, as dockerd reports it ("/web"). */
  name: string;
  /** RFC3339Nano. */
  created: string;
  path: string;
  args: string[];
  /** "sha256:…" id of the image the container was created from. */
  imageId: string;
  config: ContainerConfig;
  hostConfig: HostConfig;
  state: ContainerState;
  /** Restarts by the restart policy since the last manual start. */
  restartCount: number;
  /**
   * Set by a user's stop or kill, cleared by a user's start: `unless-stopped` containers stay
   * stopped (also across a daemon restart). Absent in records written before it existed.
   */
  hasBeenManuallyStopped: boolean;
}

/** A container as the API sees it: the record plus derived and host-side facts. */
export interface ContainerView extends ContainerRecord {
  status: ContainerStatus;
  /** Execs created or running in the container (inspect's ExecIDs); unset in listings. */
  execIds?: string[];
  /** For listings: the image name as created, or its id once that name points elsewhere. */
  imageName: string;
  logPath: string;
  /**
   * NetworkSettings.Ports: while running, every exposed or published port ("80/tcp") with its
   * host bindings (HostIp "0.0.0.0" when none was given), or null when not published; else empty.
   */
  ports: Record<string, PortBinding[] | null>;
  /** Writable-layer size in bytes, only when asked for (`size=1`). */
  sizeRw?: number;
  sizeRootFs?: number;
}

/** Filter arguments by key, each with its accepted values (map and list forms unified). */
export type FilterArgs = Record<string, string[]>;

export interface ListContainersOptions {
  all: boolean;
  /** <= 0 = no limit. */
  limit: number;
  size: boolean;
  filters: FilterArgs;
}

export type WaitCondition = 'not-running' | 'next-exit' | 'removed';

export interface WaitResult {
  statusCode: number;
  error: string | null;
}

export interface WaitHandle {
  /** Settles when the condition is met; the caller is subscribed already when it gets the handle. */
  result: Promise<WaitResult>;
  /** Stops waiting (client went away); `result` then never settles. */
  cancel(): void;
}

export interface StopOptions {
  /** Seconds; undefined = StopTimeout or 10; negative = wait forever. */
  timeout?: number;
  /** Signal name or number; undefined = StopSignal or SIGTERM. */
  signal?: string;
}

/**
 * The fields `docker update` may change (moby's container.Resources, as dockerd applies them: a
 * zero or absent value leaves the current one).
 */
export interface ResourceUpdate {
  cpuShares?: number;
  nanoCpus?: number;
  cpuPeriod?: number;
  cpuQuota?: number;
  cpuRealtimePeriod?: number;
  cpuRealtimeRuntime?: number;
  cpusetCpus?: string;
  cpusetMems?: string;
  memory?: number;
  memorySwap?: number;
  memoryReservation?: number;
  kernelMemory?: number;
  blkioWeight?: number;
  /** Absent = unchanged; 0 = unlimited. */
  pidsLimit?: number;
}

export interface UpdateContainerRequest {
  resources: ResourceUpdate;
  /** Absent or with an empty name: the policy is left as it is. */
  restartPolicy?: RestartPolicy;
}

export interface UpdateContainerResult {
  warnings: string[] | null;
}

export interface PruneContainersResult {
  /** Ids, or null when none was deleted (dockerd's JSON). */
  containersDeleted: string[] | null;
  spaceReclaimed: number;
}

export interface RemoveOptions {
  force: boolean;
  removeVolumes: boolean;
}

export interface OutputChunk {
  stream: 1 | 2;
  data: Buffer;
}

export interface AttachOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  stream: boolean;
  logs: boolean;
}

/** Where attached output goes; `write` returns false when the consumer needs a pause. */
export interface AttachSink {
  write(chunk: OutputChunk): boolean;
  /** Resolves when a sink that returned false can take more. */
  drained(): Promise<void>;
  /** The run ended (or there is nothing to stream): flush and end. */
  close(): void;
}

export interface AttachSession {
  readonly containerId: string;
  readonly tty: boolean;
  /** The client's stdin reaches the container (stdin asked and OpenStdin). */
  readonly stdin: boolean;
  /** Connects the sink: replays logs when asked, then streams until the run ends. */
  start(sink: AttachSink): void;
  /** Client stdin bytes; buffered until the process runs. Ignored unless stdin was asked and OpenStdin. */
  writeStdin(data: Buffer): void;
  /** Client closed its stdin (FIN); closes the container's stdin when StdinOnce. */
  endStdin(): void;
  /**
   * The client went away, or typed the detach keys (`byKeys`: dockerd then logs a `detach` event,
   * as for its EscapeError).
   */
  detach(byKeys?: boolean): void;
}

export interface LogsOptions {
  stdout: boolean;
  stderr: boolean;
  follow: boolean;
  /** Number of last lines; undefined = all. */
  tail?: number;
  /** Nanoseconds since the epoch; entries strictly older are skipped. */
  sinceNs?: bigint;
  /** Nanoseconds since the epoch; entries newer are skipped (and end a follow). */
  untilNs?: bigint;
}

export interface LogEntry {
  stream: 1 | 2;
  data: Buffer;
  /** Nanoseconds since the epoch. */
  timeNs: bigint;
}

export interface LogsResult {
  tty: boolean;
  entries: AsyncIterable<LogEntry>;
}

export interface EventActor {
  id: string;
  attributes: Record<string, string>;
}

export interface DaemonEvent {
  type: 'container' | 'image' | 'network' | 'volume' | 'daemon';
  action: string;
  actor: EventActor;
  scope: 'local';
  timeNs: bigint;
}

export interface EventsOptions {
  sinceNs?: bigint;
  untilNs?: bigint;
  filters: FilterArgs;
}

export interface SystemInfo {
  id: string;
  name: string;
  serverVersion: string;
  containers: number;
  containersRunning: number;
  containersPaused: number;
  containersStopped: number;
  images: number;
  ncpu: number;
  memTotal: number;
  operatingSystem: string;
  osVersion: string;
  /** The guest kernel release: what containers see in `uname -r`. */
  kernelVersion: string;
  hostKernelVersion: string;
  architecture: string;
  dataRoot: string;
  accel: string;
  hypervisor: string;
  runtimeName: string;
  insecureRegistries: string[];
  /** registry-mirrors, normalised ("http://127.0.0.1:5000/"). */
  registryMirrors: string[];
  debug: boolean;
  systemTimeNs: bigint;
  eventsListeners: number;
}

export interface VersionInfo {
  version: string;
  gitCommit: string;
  buildTime: string;
  /** Guest kernel release. */
  kernelVersion: string;
  os: string;
  /** Go's architecture naming ("amd64"), as clients expect. */
  arch: string;
  nodeVersion: string;
  hypervisor: string;
  accel: string;
}
