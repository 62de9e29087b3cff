/**
 * `docker top` and `docker stats` from the guest's own figures (agent.proto ListProcesses and
 * StatsContainer): the processes of the container's cgroup, and its cgroup's CPU, memory, pids and
 * I/O with the VM's totals (the VM's RAM is the container's memory limit, its CPU time the system
 * CPU time). Shapes as dockerd 20.10 on cgroup v2.
 *
 * top: dockerd runs the host's `ps` with ps_args and keeps the container's rows; here the guest
 * lists the processes and the daemon formats them as `ps -ef` does (UID PID PPID C STIME TTY TIME
 * CMD), whatever ps_args asks. The pids are the guest's.
 *
 * stats: one sample per second while streaming; `stream=false` waits for a second sample so that
 * precpu_stats is filled (as dockerd does, the CLI computes CPU % from the pair); `one-shot` gives
 * the first sample alone. A container that is not running gives one zeroed sample.
 */
import { ConflictError } from '../common/errdefs';
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

export const TOP_TITLES = ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD'];

const pad2 = (n: number) => String(n).padStart(2, '0');
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** ps's STIME: HH:MM when started within the last 24 hours, else MonDD (local time). */
export function psStartTime(startSec: number, nowMs: number): string {
  const d = new Date(startSec * 1000);
  if (nowMs - d.getTime() < 24 * 3600 * 1000) return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return `${MONTHS[d.getMonth()] ?? ''}${pad2(d.getDate())}`;
}

/** ps's TIME: cumulative CPU time as [DD-]HH:MM:SS. */
export function psCpuTime(ms: number): string {
  let s = Math.floor(ms / 1000);
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const hms = `${pad2(Math.floor(s / 3600))}:${pad2(Math.floor((s % 3600) / 60))}:${pad2(s % 60)}`;
  return days > 0 ? `${days}-${hms}` : hms;
}

/** The rows of `ps -ef` for the guest's processes. */
export function formatTop(processes: GuestProcess[], nowMs = Date.now()): TopResult {
  return {
    titles: [...TOP_TITLES],
    processes: processes.map((p) => [
      p.user,
      String(p.pid),
      String(p.ppid),
      String(p.elapsedMs > 0 ? Math.floor((p.cpuTimeMs * 100) / p.elapsedMs) : 0),
      psStartTime(p.startTimeSec, nowMs),
      p.tty,
      psCpuTime(p.cpuTimeMs),
      p.cmd,
    ]),
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

  async top(ref: string): Promise<TopResult> {
    const { sandbox } = this.containers.execTarget(ref);
    return formatTop(await sandbox.top());
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
