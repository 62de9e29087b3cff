/**
 * Wire shapes of exec instances, `docker top` and `docker stats`, as dockerd 20.10 writes them
 * (api/types: ExecConfig, ExecStartCheck, ContainerExecInspect, ContainerTopOKBody, StatsJSON on
 * cgroup v2), and their translation from the daemon's domain types.
 */
import { InvalidParameterError } from '../../common/errdefs';
import type { ExecCreateOptions, ExecView } from '../../daemon/exec';
import { formatRFC3339Nano } from '../../daemon/time';
import type { StatsFigures as GuestStats, StatsSample, TopResult } from '../../daemon/top-stats';

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function strings(o: Obj, key: string): string[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) {
    throw new InvalidParameterError(
      `json: cannot unmarshal ${typeof v} into Go struct field ExecConfig.${key} of type []string`,
    );
  }
  return v;
}

function text(o: Obj, key: string): string {
  const v = o[key];
  if (v === undefined || v === null) return '';
  if (typeof v !== 'string') {
    throw new InvalidParameterError(
      `json: cannot unmarshal ${typeof v} into Go struct field ExecConfig.${key} of type string`,
    );
  }
  return v;
}

const flag = (o: Obj, key: string): boolean => o[key] === true;

/** POST /containers/{id}/exec body (ExecConfig). */
export function decodeExecCreateBody(body: unknown): ExecCreateOptions {
  const o = isObj(body) ? body : {};
  return {
    cmd: strings(o, 'Cmd'),
    env: strings(o, 'Env'),
    workingDir: text(o, 'WorkingDir'),
    user: text(o, 'User'),
    tty: flag(o, 'Tty'),
    attachStdin: flag(o, 'AttachStdin'),
    attachStdout: flag(o, 'AttachStdout'),
    attachStderr: flag(o, 'AttachStderr'),
    privileged: flag(o, 'Privileged'),
    detachKeys: text(o, 'DetachKeys'),
  };
}

/** POST /exec/{id}/start body (ExecStartCheck); ConsoleSize [rows, cols] from API 1.42 on. */
export function decodeExecStartBody(body: unknown): {
  detach: boolean;
  tty: boolean;
  consoleSize?: [number, number];
} {
  const o = isObj(body) ? body : {};
  const size = o.ConsoleSize;
  const consoleSize =
    Array.isArray(size) &&
    size.length === 2 &&
    size.every((n) => typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 65535)
      ? (size as [number, number])
      : undefined;
  return { detach: flag(o, 'Detach'), tty: flag(o, 'Tty'), consoleSize };
}

export interface ExecInspectResponse {
  ID: string;
  Running: boolean;
  ExitCode: number | null;
  ProcessConfig: {
    tty: boolean;
    entrypoint: string;
    arguments: string[];
    privileged: boolean;
    user?: string;
  };
  OpenStdin: boolean;
  OpenStderr: boolean;
  OpenStdout: boolean;
  CanRemove: boolean;
  ContainerID: string;
  DetachKeys: string;
  Pid: number;
}

export function toExecInspect(v: ExecView): ExecInspectResponse {
  return {
    ID: v.id,
    Running: v.running,
    ExitCode: v.exitCode,
    ProcessConfig: {
      tty: v.tty,
      entrypoint: v.entrypoint,
      arguments: v.arguments,
      privileged: v.privileged,
      // omitempty in dockerd's ExecProcessConfig
      ...(v.user !== '' ? { user: v.user } : {}),
    },
    OpenStdin: v.openStdin,
    OpenStderr: v.openStderr,
    OpenStdout: v.openStdout,
    CanRemove: false,
    ContainerID: v.containerId,
    DetachKeys: v.detachKeys,
    Pid: v.pid,
  };
}

export interface ContainerTopResponse {
  Processes: string[][];
  Titles: string[];
}

export function toTopResponse(r: TopResult): ContainerTopResponse {
  return { Processes: r.processes, Titles: r.titles };
}

const ZERO_TIME = '0001-01-01T00:00:00Z';

function timeOf(ms: number): string {
  return ms > 0 ? formatRFC3339Nano(BigInt(Math.round(ms)) * 1_000_000n) : ZERO_TIME;
}

interface WireCpuStats {
  cpu_usage: { total_usage: number; usage_in_kernelmode: number; usage_in_usermode: number };
  system_cpu_usage?: number;
  online_cpus?: number;
  throttling_data: { periods: number; throttled_periods: number; throttled_time: number };
}

function cpuStats(s: GuestStats | undefined): WireCpuStats {
  if (!s) {
    return {
      cpu_usage: { total_usage: 0, usage_in_kernelmode: 0, usage_in_usermode: 0 },
      throttling_data: { periods: 0, throttled_periods: 0, throttled_time: 0 },
    };
  }
  return {
    cpu_usage: {
      total_usage: s.cpuUsageNs,
      usage_in_kernelmode: s.cpuSystemNs,
      usage_in_usermode: s.cpuUserNs,
    },
    system_cpu_usage: s.systemCpuNs,
    online_cpus: s.onlineCpus,
    throttling_data: {
      periods: s.throttlingPeriods,
      throttled_periods: s.throttledPeriods,
      throttled_time: s.throttledTimeNs,
    },
  };
}

/** One sample as dockerd's StatsJSON (cgroup v2: no percpu_usage, blkio bytes only). */
export function toStatsJSON(sample: StatsSample): Record<string, unknown> {
  const s = sample.stats;
  const out: Record<string, unknown> = {
    read: timeOf(sample.readMs),
    preread: timeOf(sample.preReadMs),
    pids_stats: s ? { current: s.pidsCurrent, ...(s.pidsLimit > 0 ? { limit: s.pidsLimit } : {}) } : {},
    blkio_stats: {
      io_service_bytes_recursive: s ? s.io : null,
      io_serviced_recursive: null,
      io_queue_recursive: null,
      io_service_time_recursive: null,
      io_wait_time_recursive: null,
      io_merged_recursive: null,
      io_time_recursive: null,
      sectors_recursive: null,
    },
    num_procs: 0,
    storage_stats: {},
    cpu_stats: cpuStats(s),
    precpu_stats: cpuStats(sample.preStats),
    memory_stats: s ? { usage: s.memoryUsage, stats: s.memoryStat, limit: s.memoryLimit } : {},
    name: sample.name,
    id: sample.id,
  };
  if (s) {
    const networks: Record<string, unknown> = {};
    for (const n of s.networks) {
      networks[n.name] = {
        rx_bytes: n.rxBytes,
        rx_packets: n.rxPackets,
        rx_errors: n.rxErrors,
        rx_dropped: n.rxDropped,
        tx_bytes: n.txBytes,
        tx_packets: n.txPackets,
        tx_errors: n.txErrors,
        tx_dropped: n.txDropped,
      };
    }
    out.networks = networks;
  }
  return out;
}
