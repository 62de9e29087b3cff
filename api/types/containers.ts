/**
 * Docker's container wire shapes (API 1.41–1.43, as docker-engine-api-v1.41.yaml and dockerd
 * 20.10 answer them) and their translation from and to the daemon's domain types.
 */
import { InvalidParameterError, SystemError } from '../../common/errdefs';
import type {
  ContainerConfig,
  ContainerView,
  HealthcheckConfig,
  HostConfig,
  PortBinding,
  PruneContainersResult,
  ResourceUpdate,
  UpdateContainerRequest,
} from '../../daemon/types';
import { unixSeconds } from '../../daemon/time';
import { statusText } from './human';

// ---- wire types ---------------------------------------------------------------------------------

export interface WireHealthcheck {
  Test?: string[];
  Interval?: number;
  Timeout?: number;
  StartPeriod?: number;
  Retries?: number;
}

/** container.Config on the wire. */
export interface WireContainerConfig {
  Hostname: string;
  Domainname: string;
  User: string;
  AttachStdin: boolean;
  AttachStdout: boolean;
  AttachStderr: boolean;
  ExposedPorts?: Record<string, object>;
  Tty: boolean;
  OpenStdin: boolean;
  StdinOnce: boolean;
  Env: string[] | null;
  Cmd: string[] | null;
  Healthcheck?: WireHealthcheck;
  ArgsEscaped?: boolean;
  Image: string;
  Volumes: Record<string, object> | null;
  WorkingDir: string;
  Entrypoint: string[] | null;
  NetworkDisabled?: boolean;
  MacAddress?: string;
  OnBuild: string[] | null;
  Labels: Record<string, string> | null;
  StopSignal?: string;
  StopTimeout?: number;
  Shell?: string[];
}

export type WireHostConfig = Record<string, unknown>;

export interface WireContainerState {
  Status: string;
  Running: boolean;
  Paused: boolean;
  Restarting: boolean;
  OOMKilled: boolean;
  Dead: boolean;
  Pid: number;
  ExitCode: number;
  Error: string;
  StartedAt: string;
  FinishedAt: string;
  Health?: WireHealth;
}

/** State.Health (moby `types.Health`), present only for containers with a healthcheck. */
export interface WireHealth {
  Status: string;
  FailingStreak: number;
  Log: Array<{ Start: string; End: string; ExitCode: number; Output: string }>;
}

export interface WireEndpointSettings {
  IPAMConfig: null;
  Links: null;
  Aliases: null;
  NetworkID: string;
  EndpointID: string;
  Gateway: string;
  IPAddress: string;
  IPPrefixLen: number;
  IPv6Gateway: string;
  GlobalIPv6Address: string;
  GlobalIPv6PrefixLen: number;
  MacAddress: string;
  DriverOpts: null;
}

/** GET /containers/{id}/json. */
export interface ContainerJSON {
  Id: string;
  Created: string;
  Path: string;
  Args: string[];
  State: WireContainerState;
  Image: string;
  ResolvConfPath: string;
  HostnamePath: string;
  HostsPath: string;
  LogPath: string;
  Name: string;
  RestartCount: number;
  Driver: string;
  Platform: string;
  MountLabel: string;
  ProcessLabel: string;
  AppArmorProfile: string;
  ExecIDs: string[] | null;
  HostConfig: WireHostConfig;
  GraphDriver: { Data: Record<string, string> | null; Name: string };
  SizeRw?: number;
  SizeRootFs?: number;
  Mounts: unknown[];
  Config: WireContainerConfig;
  NetworkSettings: Record<string, unknown>;
}

/** One item of GET /containers/json. */
export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  ImageID: string;
  Command: string;
  Created: number;
  Ports: Array<{ IP?: string; PrivatePort: number; PublicPort?: number; Type: string }>;
  SizeRw?: number;
  SizeRootFs?: number;
  Labels: Record<string, string>;
  State: string;
  Status: string;
  HostConfig: { NetworkMode: string };
  NetworkSettings: { Networks: Record<string, WireEndpointSettings> };
  Mounts: unknown[];
}

export interface ContainerCreateResponse {
  Id: string;
  Warnings: string[];
}

export interface ContainerUpdateResponse {
  Warnings: string[] | null;
}

export interface ContainersPruneResponse {
  ContainersDeleted: string[] | null;
  SpaceReclaimed: number;
}

export function toPruneResponse(r: PruneContainersResult): ContainersPruneResponse {
  return { ContainersDeleted: r.containersDeleted, SpaceReclaimed: r.spaceReclaimed };
}

export interface ContainerWaitResponse {
  Error: { Message: string } | null;
  StatusCode: number;
}

// ---- decoding the create body -------------------------------------------------------------------

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function bad(field: string, expected: string): never {
  throw new InvalidParameterError(`json: cannot unmarshal ${field}: expected ${expected}`);
}

function str(o: Obj, key: string): string {
  const v = o[key];
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') bad(key, 'a string');
  return v;
}

function bool(o: Obj, key: string): boolean {
  const v = o[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') bad(key, 'a boolean');
  return v;
}

function num(o: Obj, key: string): number {
  const v = o[key];
  if (v === undefined || v === null) return 0;
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(key, 'a number');
  return v;
}

/** A strslice: list of strings, or a single string (legacy clients), or null. */
function strSlice(o: Obj, key: string): string[] | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return [v];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) bad(key, 'a list of strings');
  return [...(v as string[])];
}

function strMap(o: Obj, key: string): Record<string, string> | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (!isObj(v) || !Object.values(v).every((x) => typeof x === 'string')) bad(key, 'a map of strings');
  return { ...(v as Record<string, string>) };
}

function set(o: Obj, key: string): Record<string, object> | null {
  const v = o[key];
  if (v === undefined || v === null) return null;
  if (!isObj(v)) bad(key, 'an object');
  // dockerd stores an empty set as nil (the CLI sends "Volumes":{}; inspect shows null).
  if (Object.keys(v).length === 0) return null;
  const out: Record<string, object> = {};
  for (const k of Object.keys(v)) out[k] = {};
  return out;
}

function healthcheck(o: Obj): HealthcheckConfig | null {
  const v = o.Healthcheck;
  if (v === undefined || v === null) return null;
  if (!isObj(v)) bad('Healthcheck', 'an object');
  const hc: HealthcheckConfig = {};
  const test = strSlice(v, 'Test');
  if (test) hc.test = test;
  if (typeof v.Interval === 'number') hc.interval = v.Interval;
  if (typeof v.Timeout === 'number') hc.timeout = v.Timeout;
  if (typeof v.StartPeriod === 'number') hc.startPeriod = v.StartPeriod;
  if (typeof v.Retries === 'number') hc.retries = v.Retries;
  return hc;
}

export function decodeContainerConfig(o: Obj): ContainerConfig {
  const stopTimeout = o.StopTimeout;
  if (stopTimeout !== undefined && stopTimeout !== null && typeof stopTimeout !== 'number')
    bad('StopTimeout', 'a number');
  const env = strSlice(o, 'Env');
  return {
    hostname: str(o, 'Hostname'),
    domainname: str(o, 'Domainname'),
    user: str(o, 'User'),
    attachStdin: bool(o, 'AttachStdin'),
    attachStdout: bool(o, 'AttachStdout'),
    attachStderr: bool(o, 'AttachStderr'),
    exposedPorts: set(o, 'ExposedPorts'),
    tty: bool(o, 'Tty'),
    openStdin: bool(o, 'OpenStdin'),
    stdinOnce: bool(o, 'StdinOnce'),
    env,
    cmd: strSlice(o, 'Cmd'),
    healthcheck: healthcheck(o),
    argsEscaped: bool(o, 'ArgsEscaped'),
    image: str(o, 'Image'),
    volumes: set(o, 'Volumes'),
    workingDir: str(o, 'WorkingDir'),
    entrypoint: strSlice(o, 'Entrypoint'),
    networkDisabled: bool(o, 'NetworkDisabled'),
    macAddress: str(o, 'MacAddress'),
    onBuild: strSlice(o, 'OnBuild'),
    labels: strMap(o, 'Labels'),
    stopSignal: str(o, 'StopSignal'),
    stopTimeout: typeof stopTimeout === 'number' ? stopTimeout : null,
    shell: strSlice(o, 'Shell'),
  };
}

const NAMED_HOST_FIELDS = new Set([
  'AutoRemove',
  'RestartPolicy',
  'NetworkMode',
  'PortBindings',
  'Binds',
  'ConsoleSize',
  'Memory',
  'NanoCpus',
  'LogConfig',
  'Runtime',
]);

export function decodeHostConfig(v: unknown): HostConfig {
  const o: Obj = isObj(v) ? v : {};
  if (v !== undefined && v !== null && !isObj(v)) bad('HostConfig', 'an object');

  // Validated by the daemon (dockerd's validateRestartPolicy), before the image is looked up.
  const rp = isObj(o.RestartPolicy) ? o.RestartPolicy : {};
  const restartName = str(rp, 'Name');
  const maxRetry = num(rp, 'MaximumRetryCount');

  const portBindings: Record<string, PortBinding[] | null> = {};
  if (isObj(o.PortBindings)) {
    for (const [port, list] of Object.entries(o.PortBindings)) {
      if (list === null) {
        portBindings[port] = null;
        continue;
      }
      if (!Array.isArray(list)) bad('PortBindings', 'lists of bindings');
      portBindings[port] = list.map((b) => {
        const binding: Obj = isObj(b) ? b : {};
        return { hostIp: str(binding, 'HostIp'), hostPort: str(binding, 'HostPort') };
      });
    }
  }

  let consoleSize: [number, number] = [0, 0];
  if (Array.isArray(o.ConsoleSize) && o.ConsoleSize.length === 2) {
    const [h, w] = o.ConsoleSize as unknown[];
    if (typeof h === 'number' && typeof w === 'number') consoleSize = [h, w];
  }

  const memory = num(o, 'Memory');
  if (memory > 0 && memory < 6 * 1024 * 1024)
    throw new InvalidParameterError('Minimum memory limit allowed is 6MB');
  const nanoCpus = num(o, 'NanoCpus');
  if (nanoCpus < 0)
    throw new InvalidParameterError('Range of CPUs is from 0.01 to the number of CPUs available');

  const lc = isObj(o.LogConfig) ? o.LogConfig : {};
  const logType = str(lc, 'Type');
  if (logType !== '' && logType !== 'json-file') {
    throw new InvalidParameterError(`logging driver "${logType}" is not supported; only json-file is`);
  }

  const passthrough: Obj = {};
  for (const [k, value] of Object.entries(o)) if (!NAMED_HOST_FIELDS.has(k)) passthrough[k] = value;

  return {
    autoRemove: bool(o, 'AutoRemove'),
    restartPolicy: { name: restartName, maximumRetryCount: maxRetry },
    networkMode: str(o, 'NetworkMode') || 'default',
    portBindings,
    binds: strSlice(o, 'Binds'),
    consoleSize,
    memory,
    nanoCpus,
    logConfig: { type: 'json-file', config: strMap(lc, 'Config') ?? {} },
    runtime: str(o, 'Runtime'),
    passthrough,
  };
}

const CONFIG_KEYS = [
  'Hostname',
  'Domainname',
  'User',
  'AttachStdin',
  'AttachStdout',
  'AttachStderr',
  'ExposedPorts',
  'Tty',
  'OpenStdin',
  'StdinOnce',
  'Env',
  'Cmd',
  'Healthcheck',
  'ArgsEscaped',
  'Image',
  'Volumes',
  'WorkingDir',
  'Entrypoint',
  'NetworkDisabled',
  'MacAddress',
  'OnBuild',
  'Labels',
  'StopSignal',
  'StopTimeout',
  'Shell',
];

/** The body of POST /containers/create: container.Config with HostConfig and NetworkingConfig. */
export function decodeCreateBody(body: unknown): { config: ContainerConfig; hostConfig: HostConfig } {
  if (!isObj(body) || !CONFIG_KEYS.some((k) => k in body)) {
    throw new InvalidParameterError('Config cannot be empty in order to create a container');
  }
  return { config: decodeContainerConfig(body), hostConfig: decodeHostConfig(body.HostConfig) };
}

// ---- decoding the update body -------------------------------------------------------------------

/** Go's name for a JSON value's kind, as encoding/json's UnmarshalTypeError prints it. */
function jsonKind(v: unknown): string {
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'boolean') return 'bool';
  return typeof v;
}

function unmarshalError(field: string, v: unknown, goType: string): never {
  const what = typeof v === 'number' ? `number ${v}` : jsonKind(v);
  throw new SystemError(`json: cannot unmarshal ${what} into Go struct field ${field} of type ${goType}`);
}

const UPDATE_INTEGERS: Array<[string, keyof ResourceUpdate, string]> = [
  ['BlkioWeight', 'blkioWeight', 'uint16'],
  ['CpuShares', 'cpuShares', 'int64'],
  ['NanoCpus', 'nanoCpus', 'int64'],
  ['CpuPeriod', 'cpuPeriod', 'int64'],
  ['CpuQuota', 'cpuQuota', 'int64'],
  ['CpuRealtimePeriod', 'cpuRealtimePeriod', 'int64'],
  ['CpuRealtimeRuntime', 'cpuRealtimeRuntime', 'int64'],
  ['Memory', 'memory', 'int64'],
  ['MemorySwap', 'memorySwap', 'int64'],
  ['MemoryReservation', 'memoryReservation', 'int64'],
  ['KernelMemory', 'kernelMemory', 'int64'],
];

/**
 * The body of POST /containers/{id}/update (container.UpdateConfig: Resources and RestartPolicy),
 * decoded as Go's encoding/json would: type mismatches are its 500 errors, unknown fields are
 * ignored, null is an empty update. `undefined` (no body) is dockerd's "EOF".
 */
export function decodeUpdateBody(
  body: unknown,
  apiVersion?: { atLeast140: boolean },
): UpdateContainerRequest {
  if (body === undefined) throw new SystemError('EOF');
  if (body === null) return { resources: {} };
  if (!isObj(body)) {
    throw new SystemError(
      `json: cannot unmarshal ${jsonKind(body)} into Go value of type container.UpdateConfig`,
    );
  }
  const resources: ResourceUpdate = {};
  for (const [wire, key, goType] of UPDATE_INTEGERS) {
    const v = body[wire];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isInteger(v)) unmarshalError(`UpdateConfig.${wire}`, v, goType);
    (resources as Record<string, number>)[key] = v;
  }
  for (const [wire, key] of [
    ['CpusetCpus', 'cpusetCpus'],
    ['CpusetMems', 'cpusetMems'],
  ] as const) {
    const v = body[wire];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') unmarshalError(`UpdateConfig.${wire}`, v, 'string');
    resources[key] = v;
  }
  const pids = body.PidsLimit;
  if (pids !== undefined && pids !== null && (apiVersion?.atLeast140 ?? true)) {
    if (typeof pids !== 'number' || !Number.isInteger(pids))
      unmarshalError('UpdateConfig.PidsLimit', pids, 'int64');
    // Both 0 and -1 (any negative) mean unlimited, stored as 0.
    resources.pidsLimit = pids <= 0 ? 0 : pids;
  }
  const request: UpdateContainerRequest = { resources };
  const rp = body.RestartPolicy;
  if (rp !== undefined && rp !== null) {
    if (!isObj(rp)) unmarshalError('UpdateConfig.RestartPolicy', rp, 'container.RestartPolicy');
    const name = rp.Name ?? '';
    if (typeof name !== 'string') unmarshalError('UpdateConfig.RestartPolicy.Name', name, 'string');
    const max = rp.MaximumRetryCount ?? 0;
    if (typeof max !== 'number' || !Number.isInteger(max))
      unmarshalError('UpdateConfig.RestartPolicy.MaximumRetryCount', max, 'int');
    request.restartPolicy = { name, maximumRetryCount: max };
  }
  return request;
}

// ---- encoding -----------------------------------------------------------------------------------

export function encodeContainerConfig(c: ContainerConfig): WireContainerConfig {
  const wire: WireContainerConfig = {
    Hostname: c.hostname,
    Domainname: c.domainname,
    User: c.user,
    AttachStdin: c.attachStdin,
    AttachStdout: c.attachStdout,
    AttachStderr: c.attachStderr,
    Tty: c.tty,
    OpenStdin: c.openStdin,
    StdinOnce: c.stdinOnce,
    Env: c.env,
    Cmd: c.cmd,
    Image: c.image,
    Volumes: c.volumes,
    WorkingDir: c.workingDir,
    Entrypoint: c.entrypoint,
    OnBuild: c.onBuild,
    Labels: c.labels,
  };
  // Fields Go marshals with omitempty, in dockerd's order.
  const ordered: Record<string, unknown> = {};
  for (const key of CONFIG_KEYS) {
    if (key in wire) ordered[key] = (wire as unknown as Record<string, unknown>)[key];
    if (key === 'ExposedPorts' && c.exposedPorts && Object.keys(c.exposedPorts).length > 0)
      ordered.ExposedPorts = c.exposedPorts;
    if (key === 'Healthcheck' && c.healthcheck) {
      const h: WireHealthcheck = {};
      if (c.healthcheck.test) h.Test = c.healthcheck.test;
      if (c.healthcheck.interval) h.Interval = c.healthcheck.interval;
      if (c.healthcheck.timeout) h.Timeout = c.healthcheck.timeout;
      if (c.healthcheck.startPeriod) h.StartPeriod = c.healthcheck.startPeriod;
      if (c.healthcheck.retries) h.Retries = c.healthcheck.retries;
      ordered.Healthcheck = h;
    }
    if (key === 'ArgsEscaped' && c.argsEscaped) ordered.ArgsEscaped = true;
    if (key === 'NetworkDisabled' && c.networkDisabled) ordered.NetworkDisabled = true;
    if (key === 'MacAddress' && c.macAddress) ordered.MacAddress = c.macAddress;
    if (key === 'StopSignal' && c.stopSignal) ordered.StopSignal = c.stopSignal;
    if (key === 'StopTimeout' && c.stopTimeout !== null) ordered.StopTimeout = c.stopTimeout;
    if (key === 'Shell' && c.shell) ordered.Shell = c.shell;
  }
  return ordered as unknown as WireContainerConfig;
}

/** HostConfig as dockerd reports it after defaults (sample: dockerd-responses/container_inspect.json). */
const HOST_CONFIG_DEFAULTS: Record<string, unknown> = {
  Binds: null,
  ContainerIDFile: '',
  LogConfig: { Type: 'json-file', Config: {} },
  NetworkMode: 'default',
  PortBindings: {},
  RestartPolicy: { Name: 'no', MaximumRetryCount: 0 },
  AutoRemove: false,
  VolumeDriver: '',
  VolumesFrom: null,
  CapAdd: null,
  CapDrop: null,
  CgroupnsMode: 'private',
  Dns: null,
  DnsOptions: null,
  DnsSearch: null,
  ExtraHosts: null,
  GroupAdd: null,
  IpcMode: 'private',
  Cgroup: '',
  Links: null,
  OomScoreAdj: 0,
  PidMode: '',
  Privileged: false,
  PublishAllPorts: false,
  ReadonlyRootfs: false,
  SecurityOpt: null,
  UTSMode: '',
  UsernsMode: '',
  ShmSize: 67108864,
  Runtime: '',
  ConsoleSize: [0, 0],
  Isolation: '',
  CpuShares: 0,
  Memory: 0,
  NanoCpus: 0,
  CgroupParent: '',
  BlkioWeight: 0,
  BlkioWeightDevice: null,
  BlkioDeviceReadBps: null,
  BlkioDeviceWriteBps: null,
  BlkioDeviceReadIOps: null,
  BlkioDeviceWriteIOps: null,
  CpuPeriod: 0,
  CpuQuota: 0,
  CpuRealtimePeriod: 0,
  CpuRealtimeRuntime: 0,
  CpusetCpus: '',
  CpusetMems: '',
  Devices: null,
  DeviceCgroupRules: null,
  DeviceRequests: null,
  KernelMemory: 0,
  KernelMemoryTCP: 0,
  MemoryReservation: 0,
  MemorySwap: 0,
  MemorySwappiness: null,
  OomKillDisable: false,
  PidsLimit: null,
  Ulimits: null,
  CpuCount: 0,
  CpuPercent: 0,
  IOMaximumIOps: 0,
  IOMaximumBandwidth: 0,
  MaskedPaths: [
    '/proc/asound',
    '/proc/acpi',
    '/proc/kcore',
    '/proc/keys',
    '/proc/latency_stats',
    '/proc/timer_list',
    '/proc/timer_stats',
    '/proc/sched_debug',
    '/proc/scsi',
    '/sys/firmware',
  ],
  ReadonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
};

export function encodeHostConfig(h: HostConfig): WireHostConfig {
  const out: Record<string, unknown> = { ...HOST_CONFIG_DEFAULTS };
  // Lists are reported as sent (the CLI sends [], the raw API may send nothing: null).
  for (const [k, v] of Object.entries(h.passthrough)) {
    if ((k === 'ShmSize' && v === 0) || (k === 'IpcMode' && v === '') || (k === 'CgroupnsMode' && v === ''))
      continue;
    if ((k === 'MaskedPaths' || k === 'ReadonlyPaths') && v === null) continue;
    if (k === 'PidsLimit' && v === 0) continue;
    if (k === 'MemorySwappiness' && v === -1) continue;
    out[k] = v;
  }
  const portBindings: Record<string, Array<{ HostIp: string; HostPort: string }> | null> = {};
  for (const [port, list] of Object.entries(h.portBindings)) {
    portBindings[port] = list ? list.map((b) => ({ HostIp: b.hostIp, HostPort: b.hostPort })) : null;
  }
  Object.assign(out, {
    Binds: h.binds,
    LogConfig: { Type: h.logConfig.type, Config: h.logConfig.config },
    NetworkMode: h.networkMode,
    PortBindings: portBindings,
    // As sent: the CLI sends "no", the raw API may send nothing ("").
    RestartPolicy: { Name: h.restartPolicy.name, MaximumRetryCount: h.restartPolicy.maximumRetryCount },
    AutoRemove: h.autoRemove,
    ConsoleSize: h.consoleSize,
    Memory: h.memory,
    NanoCpus: h.nanoCpus,
    Runtime: h.runtime,
  });
  return out;
}

function networkName(mode: string): string {
  return mode === 'default' || mode === '' ? 'bridge' : mode;
}

function emptyEndpoint(): WireEndpointSettings {
  return {
    IPAMConfig: null,
    Links: null,
    Aliases: null,
    NetworkID: '',
    EndpointID: '',
    Gateway: '',
    IPAddress: '',
    IPPrefixLen: 0,
    IPv6Gateway: '',
    GlobalIPv6Address: '',
    GlobalIPv6PrefixLen: 0,
    MacAddress: '',
    DriverOpts: null,
  };
}

function networks(c: ContainerView): Record<string, WireEndpointSettings> {
  const mode = c.hostConfig.networkMode;
  if (mode === 'none' && !c.state.running) return {};
  return { [networkName(mode)]: emptyEndpoint() };
}

export function encodeState(c: ContainerView): WireContainerState {
  const s = c.state;
  return {
    Status: c.status,
    Running: s.running,
    Paused: s.paused,
    Restarting: s.restarting,
    OOMKilled: s.oomKilled,
    Dead: s.dead,
    Pid: s.pid,
    ExitCode: s.exitCode,
    Error: s.error,
    StartedAt: s.startedAt,
    FinishedAt: s.finishedAt,
    ...(s.health
      ? {
          Health: {
            Status: s.health.status,
            FailingStreak: s.health.failingStreak,
            Log: s.health.log.map((r) => ({
              Start: r.start,
              End: r.end,
              ExitCode: r.exitCode,
              Output: r.output,
            })),
          },
        }
      : {}),
  };
}

/** NetworkSettings.Ports: the daemon's port map (empty unless running), in Docker's shape. */
function ports(c: ContainerView): Record<string, Array<{ HostIp: string; HostPort: string }> | null> {
  const out: Record<string, Array<{ HostIp: string; HostPort: string }> | null> = {};
  for (const [port, list] of Object.entries(c.ports)) {
    out[port] = list ? list.map((b) => ({ HostIp: b.hostIp, HostPort: b.hostPort })) : null;
  }
  return out;
}

export interface EncodeOptions {
  storageDriver: string;
}

export function toContainerJSON(c: ContainerView, opts: EncodeOptions): ContainerJSON {
  const json: ContainerJSON = {
    Id: c.id,
    Created: c.created,
    Path: c.path,
    Args: c.args,
    State: encodeState(c),
    Image: c.imageId,
    ResolvConfPath: '',
    HostnamePath: '',
    HostsPath: '',
    LogPath: c.logPath,
    Name: c.name,
    RestartCount: c.restartCount,
    Driver: opts.storageDriver,
    Platform: 'linux',
    MountLabel: '',
    ProcessLabel: '',
    AppArmorProfile: '',
    ExecIDs: c.execIds && c.execIds.length > 0 ? c.execIds : null,
    HostConfig: encodeHostConfig(c.hostConfig),
    GraphDriver: { Data: null, Name: opts.storageDriver },
    Mounts: [],
    Config: encodeContainerConfig(c.config),
    NetworkSettings: {
      Bridge: '',
      SandboxID: '',
      HairpinMode: false,
      LinkLocalIPv6Address: '',
      LinkLocalIPv6PrefixLen: 0,
      Ports: ports(c),
      SandboxKey: '',
      SecondaryIPAddresses: null,
      SecondaryIPv6Addresses: null,
      EndpointID: '',
      Gateway: '',
      GlobalIPv6Address: '',
      GlobalIPv6PrefixLen: 0,
      IPAddress: '',
      IPPrefixLen: 0,
      IPv6Gateway: '',
      MacAddress: '',
      Networks: networks(c),
    },
  };
  if (c.sizeRw !== undefined) json.SizeRw = c.sizeRw;
  if (c.sizeRootFs !== undefined) json.SizeRootFs = c.sizeRootFs;
  return json;
}

/** dockerd's list Command: Path and Args, each arg with a space wrapped in single quotes. */
export function commandText(path: string, args: string[]): string {
  if (args.length === 0) return path;
  return `${path} ${args.map((a) => (a.includes(' ') ? `'${a}'` : a)).join(' ')}`;
}

export function toContainerSummary(c: ContainerView, nowMs = Date.now()): ContainerSummary {
  // dockerd's list: one entry per host binding, one without a public port per unpublished port.
  const summaryPorts: ContainerSummary['Ports'] = [];
  for (const [port, list] of Object.entries(c.ports)) {
    const [num, proto] = port.split('/');
    const privatePort = Number(num);
    const type = proto ?? 'tcp';
    if (!list || list.length === 0) summaryPorts.push({ PrivatePort: privatePort, Type: type });
    for (const b of list ?? []) {
      summaryPorts.push({
        IP: b.hostIp,
        PrivatePort: privatePort,
        PublicPort: Number(b.hostPort),
        Type: type,
      });
    }
  }
  const summary: ContainerSummary = {
    Id: c.id,
    Names: [c.name],
    Image: c.imageName,
    ImageID: c.imageId,
    Command: commandText(c.path, c.args),
    Created: unixSeconds(c.created),
    Ports: summaryPorts,
    Labels: c.config.labels ?? {},
    State: c.status,
    Status: statusText(c.state, nowMs),
    HostConfig: { NetworkMode: c.hostConfig.networkMode },
    NetworkSettings: { Networks: networks(c) },
    Mounts: [],
  };
  if (c.sizeRw !== undefined) summary.SizeRw = c.sizeRw;
  if (c.sizeRootFs !== undefined) summary.SizeRootFs = c.sizeRootFs;
  return summary;
}
