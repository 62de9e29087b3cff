/**
 * Healthchecks, as dockerd 20.10 runs them (moby daemon/health.go): a monitor per running
 * container that waits one interval, runs the probe as an exec in the container, records the
 * result, and waits again. This file holds the policy (timing, streaks, status, log, output
 * limits); the container service supplies the probe runner (an exec through the agent) and stores
 * the state it reports.
 *
 * dockerd's rules kept here:
 * - defaults: interval 30 s (also before the first probe), timeout 30 s, start period 0, retries 3;
 * - a probe exiting 0 makes the container healthy and resets the streak; any other result adds
 *   one to the streak, except while still "starting" within the start period, and the streak
 *   reaching `retries` makes it unhealthy;
 * - a probe that outlives the timeout is killed and recorded with exit code -1 and
 *   "Health check exceeded timeout (<Go duration>)"; one that cannot be started is recorded with
 *   -1 and the error's text;
 * - output (stdout and stderr together) is kept up to 4096 bytes, "..." marking a cut;
 * - the log keeps the last 5 results; an event `health_status: <status>` follows each change.
 */
import { formatRFC3339Nano, nowNs } from './time';
import type { HealthcheckConfig } from './types';

export const MAX_HEALTH_OUTPUT = 4096;
export const MAX_HEALTH_LOG_ENTRIES = 5;
const NS_PER_MS = 1_000_000;
export const DEFAULT_HEALTH_INTERVAL_NS = 30_000 * NS_PER_MS;
export const DEFAULT_HEALTH_TIMEOUT_NS = 30_000 * NS_PER_MS;
export const DEFAULT_HEALTH_RETRIES = 3;

export type HealthStatus = 'starting' | 'healthy' | 'unhealthy';

export interface HealthcheckResult {
  /** RFC3339Nano. */
  start: string;
  end: string;
  exitCode: number;
  output: string;
}

/** State.Health (moby `types.Health`). */
export interface HealthState {
  status: HealthStatus;
  failingStreak: number;
  log: HealthcheckResult[];
}

export interface ProbeOutcome {
  exitCode: number;
  /** stdout and stderr as the probe wrote them (the runner may stop collecting past the limit). */
  output: Buffer;
}

/** Runs one probe command in the running container (an exec); `signal` aborts it (kill). */
export type ProbeRunner = (argv: string[], signal: AbortSignal) => Promise<ProbeOutcome>;

/** The probe a healthcheck config asks for, or undefined for none ("NONE", empty, unknown type). */
export function probeCommand(
  config: HealthcheckConfig | null | undefined,
  shell: string[] | null,
): string[] | undefined {
  const test = config?.test;
  if (!test || test.length === 0) return undefined;
  switch (test[0]) {
    case 'CMD':
      return test.length > 1 ? test.slice(1) : undefined;
    case 'CMD-SHELL':
      return [...(shell && shell.length > 0 ? shell : ['/bin/sh', '-c']), ...test.slice(1)];
    default:
      return undefined; // "NONE", or a type dockerd ignores too
  }
}

/** Go's time.Duration.String() for a non-negative nanosecond count ("30s", "1.5s", "2m0s", "500ms"). */
export function formatGoDuration(ns: number): string {
  if (ns === 0) return '0s';
  if (ns < 1000) return `${ns}ns`;
  if (ns < 1_000_000) return `${trimFraction(ns / 1000)}µs`;
  if (ns < 1_000_000_000) return `${trimFraction(ns / 1_000_000)}ms`;
  let rest = ns;
  const hours = Math.floor(rest / 3_600_000_000_000);
  rest -= hours * 3_600_000_000_000;
  const minutes = Math.floor(rest / 60_000_000_000);
  rest -= minutes * 60_000_000_000;
  const seconds = `${trimFraction(rest / 1_000_000_000)}s`;
  if (hours > 0) return `${hours}h${minutes}m${seconds}`;
  if (minutes > 0) return `${minutes}m${seconds}`;
  return seconds;
}

function trimFraction(value: number): string {
  return value.toFixed(9).replace(/\.?0+$/, '');
}

/** Bounded probe output as dockerd keeps it. */
export function limitProbeOutput(output: Buffer): string {
  if (output.length <= MAX_HEALTH_OUTPUT) return output.toString('utf8');
  return `${output.subarray(0, MAX_HEALTH_OUTPUT).toString('utf8')}...`;
}

export interface HealthClock {
  nowNs(): bigint;
  setTimeout(fn: () => void, ms: number): { cancel(): void };
}

export const systemClock: HealthClock = {
  nowNs,
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

export interface HealthMonitorOptions {
  config: HealthcheckConfig;
  /** The probe's argv (probeCommand()). */
  command: string[];
  /** When the container started (ns since the epoch): the start period counts from it. */
  startedAtNs: bigint;
  /** The state to continue from (a fresh "starting" one on each start). */
  state: HealthState;
  run: ProbeRunner;
  /** Called after every probe with the new state; `changed` when the status moved. */
  onUpdate(state: HealthState, changed: boolean): void;
  clock?: HealthClock;
}

/** A fresh state, as dockerd sets it when a container with a healthcheck starts. */
export function startingHealth(previous?: HealthState): HealthState {
  return { status: 'starting', failingStreak: 0, log: previous ? [...previous.log] : [] };
}

/**
 * Probes one running container until stopped. One monitor per container run; stop() it when the
 * container stops, pauses or is removed.
 */
export class HealthMonitor {
  private readonly clock: HealthClock;
  private timer?: { cancel(): void };
  private probing?: AbortController;
  private stopped = false;
  private state: HealthState;
  /** Settles when the probe in flight (if any) has ended. */
  private inFlight: Promise<void> = Promise.resolve();

  constructor(private readonly opts: HealthMonitorOptions) {
    this.clock = opts.clock ?? systemClock;
    this.state = { ...opts.state, log: [...opts.state.log] };
  }

  start(): void {
    this.schedule();
  }

  /** Stops probing; a probe in flight is aborted and its result dropped. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.timer?.cancel();
    this.probing?.abort();
    await this.inFlight;
  }

  private schedule() {
    if (this.stopped) return;
    const intervalNs = this.opts.config.interval || DEFAULT_HEALTH_INTERVAL_NS;
    this.timer = this.clock.setTimeout(() => {
      this.inFlight = this.probeOnce();
    }, intervalNs / NS_PER_MS);
  }

  private async probeOnce(): Promise<void> {
    if (this.stopped) return;
    const timeoutNs = this.opts.config.timeout || DEFAULT_HEALTH_TIMEOUT_NS;
    const startNs = this.clock.nowNs();
    const abort = new AbortController();
    this.probing = abort;
    let timedOut = false;
    const timeout = this.clock.setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, timeoutNs / NS_PER_MS);
    let exitCode: number;
    let output: string;
    try {
      const outcome = await this.opts.run(this.opts.command, abort.signal);
      if (timedOut) {
        const text = limitProbeOutput(outcome.output);
        exitCode = -1;
        output = text
          ? `Health check exceeded timeout (${formatGoDuration(timeoutNs)}): ${text}`
          : `Health check exceeded timeout (${formatGoDuration(timeoutNs)})`;
      } else {
        exitCode = outcome.exitCode;
        output = limitProbeOutput(outcome.output);
      }
    } catch (err) {
      exitCode = -1;
      output = timedOut
        ? `Health check exceeded timeout (${formatGoDuration(timeoutNs)})`
        : err instanceof Error
          ? err.message
          : String(err);
    } finally {
      timeout.cancel();
      this.probing = undefined;
    }
    if (this.stopped) return;
    this.record(
      {
        start: formatRFC3339Nano(startNs),
        end: formatRFC3339Nano(this.clock.nowNs()),
        exitCode,
        output,
      },
      startNs,
    );
    this.schedule();
  }

  private record(result: HealthcheckResult, startNs: bigint) {
    const before = this.state.status;
    const log = [...this.state.log, result].slice(-MAX_HEALTH_LOG_ENTRIES);
    let { status, failingStreak } = this.state;
    if (result.exitCode === 0) {
      status = 'healthy';
      failingStreak = 0;
    } else {
      const startPeriodNs = BigInt(this.opts.config.startPeriod || 0);
      const withinStartPeriod = status === 'starting' && startNs - this.opts.startedAtNs < startPeriodNs;
      if (!withinStartPeriod) {
        failingStreak++;
        const retries = this.opts.config.retries || DEFAULT_HEALTH_RETRIES;
        if (failingStreak >= retries) status = 'unhealthy';
      }
    }
    this.state = { status, failingStreak, log };
    this.opts.onUpdate({ ...this.state, log: [...log] }, status !== before);
  }
}
