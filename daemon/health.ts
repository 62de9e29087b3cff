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
import type { Logger } from '../common/logger';
import type { ExecCreateOptions, ExecStreams, ExecView } from './exec';
import { formatRFC3339Nano, nowNs, parseRFC3339Nano, withinMs } from './time';
import type { ContainerConfig, HealthcheckConfig, HealthcheckResult, HealthState } from './types';

export type { HealthcheckResult, HealthState, HealthStatus } from './types';

export const MAX_HEALTH_OUTPUT = 4096;
export const MAX_HEALTH_LOG_ENTRIES = 5;
const NS_PER_MS = 1_000_000;
export const DEFAULT_HEALTH_INTERVAL_NS = 30_000 * NS_PER_MS;
export const DEFAULT_HEALTH_TIMEOUT_NS = 30_000 * NS_PER_MS;
export const DEFAULT_HEALTH_RETRIES = 3;

export interface ProbeOutcome {
  exitCode: number;
  /** stdout and stderr as the probe wrote them (the runner may stop collecting past the limit). */
  output: Buffer;
  /** The probe failed because its container's process exited meanwhile: no result (dropped). */
  containerExited?: boolean;
}

/**
 * How long the result of a probe that was killed by a signal (or could not start) waits to learn
 * whether its container's process exited too — the probe killed with it. The two exits reach the
 * daemon at most a few hundred milliseconds apart (crun run cleans up before it exits), while the
 * run's teardown, and the exit record that stops the monitor, takes longer under TCG. dockerd drops
 * a result that comes after its monitor stopped. An ordinary failure (exit 1..127) never waits.
 */
const KILLED_PROBE_SETTLE_MS = 2000;

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
      // Killed with its container: the monitor is about to stop; nothing to record or schedule.
      if (outcome.containerExited) return;
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

// ---- the service: one monitor per running container with a healthcheck ---------------------------

/** What the healthchecks need from the container service. */
export interface HealthContainers {
  /** The container's config and state; undefined once it is gone. */
  healthTarget(
    id: string,
  ):
    | { config: ContainerConfig; startedAt: string; running: boolean; paused: boolean; health?: HealthState }
    | undefined;
  /**
   * Records State.Health (kept with the container's state). `when: 'running'` (probe results)
   * records only while the container runs; `'stopped'` only while it is stopped or paused, so a
   * late write cannot overwrite the "starting" of a start that came in between.
   */
  setHealth(id: string, health: HealthState, when?: 'running' | 'stopped'): Promise<void>;
  publishContainerEvent(id: string, action: string, extra: Record<string, string>): void;
}

/** Runs a probe as an exec in the container (ExecService.runProbe). */
export interface HealthProbes {
  runProbe(containerId: string, argv: string[], signal: AbortSignal): Promise<ProbeOutcome>;
}

export interface HealthEvents {
  subscribe(
    options: { filters: Record<string, string[]> },
    onEvent: (e: { type: string; action: string; actor: { id: string } }) => void,
  ): { close(): void };
}

/**
 * Follows the container events as dockerd's monitor does: `start` resets State.Health to
 * "starting" (keeping the log) and starts probing, `unpause` resumes probing, `pause`, `die` and
 * `destroy` stop it.
 */
export class HealthcheckService {
  private readonly monitors = new Map<string, HealthMonitor>();
  private subscription?: { close(): void };

  constructor(
    private readonly events: HealthEvents,
    private readonly containers: HealthContainers,
    private readonly probes: HealthProbes,
    private readonly log: Logger,
    private readonly clock: HealthClock = systemClock,
  ) {}

  start(): void {
    this.subscription = this.events.subscribe(
      { filters: { type: ['container'], event: ['start', 'unpause', 'pause', 'die', 'destroy'] } },
      (e) => {
        const id = e.actor.id;
        if (e.action === 'start' || e.action === 'unpause') {
          void this.begin(id).catch((err: unknown) =>
            this.log.warn('healthcheck not started', { id, error: String(err) }),
          );
        } else if (e.action === 'destroy') {
          void this.end(id);
        } else {
          void this.halt(id);
        }
      },
    );
  }

  async shutdown(): Promise<void> {
    this.subscription?.close();
    await Promise.all([...this.monitors.keys()].map((id) => this.end(id)));
  }

  private async begin(id: string): Promise<void> {
    await this.end(id);
    const target = this.containers.healthTarget(id);
    if (!target || !target.running || target.paused) return;
    const command = probeCommand(target.config.healthcheck, target.config.shell);
    if (!command || !target.config.healthcheck) return;
    // The container service set "starting" as it started the container (dockerd does it in the
    // start itself); a record from before healthchecks existed has none yet.
    let state = target.health;
    if (!state) {
      state = startingHealth();
      await this.containers.setHealth(id, state);
    }
    const startedAtNs = parseRFC3339Nano(target.startedAt) ?? this.clock.nowNs();
    const monitor = new HealthMonitor({
      config: target.config.healthcheck,
      command,
      startedAtNs,
      state,
      clock: this.clock,
      run: (argv, signal) => this.probes.runProbe(id, argv, signal),
      onUpdate: (next, changed) => {
        if (this.monitors.get(id) !== monitor) return;
        void this.containers
          .setHealth(id, next)
          .then(() => {
            if (changed) this.containers.publishContainerEvent(id, `health_status: ${next.status}`, {});
          })
          .catch((err: unknown) => this.log.warn('health state not recorded', { id, error: String(err) }));
      },
    });
    this.monitors.set(id, monitor);
    monitor.start();
  }

  /**
   * dockerd's CloseMonitorChannel on die and pause: probing stops and the status becomes
   * "unhealthy" "for compatibility reasons" (streak and log kept); a later start resets it to
   * "starting", an unpause resumes probing from there.
   */
  private async halt(id: string): Promise<void> {
    if (!this.monitors.has(id)) return;
    await this.end(id);
    const health = this.containers.healthTarget(id)?.health;
    // On `die` the container service already wrote "unhealthy" with the exit (containers.ts).
    if (!health || health.status === 'unhealthy') return;
    await this.containers
      .setHealth(id, { ...health, status: 'unhealthy' }, 'stopped')
      .catch((err: unknown) => this.log.warn('health state not recorded', { id, error: String(err) }));
  }

  private async end(id: string): Promise<void> {
    const monitor = this.monitors.get(id);
    if (!monitor) return;
    this.monitors.delete(id);
    await monitor.stop();
  }
}

/** What a probe needs of the exec service (daemon/exec.ts). */
export interface ProbeExecs {
  create(ref: string, options: ExecCreateOptions): string;
  start(id: string, streams?: ExecStreams): Promise<void>;
  inspect(id: string): ExecView;
  kill(id: string, signo: number): Promise<void>;
  remove(id: string): void;
}

const SIGKILL = 9;

/**
 * Probes as dockerd runs them (cmdProbe): an exec in the container with its user and working dir,
 * stdout and stderr collected together, no stdin, no terminal; it shows in ExecIDs and publishes
 * exec_create/exec_start/exec_die like any exec, and is forgotten once it ended.
 */
export function execProbes(
  execs: ProbeExecs,
  containerOf: (id: string) => ContainerConfig | undefined,
  /** The running container's RunningSandbox.processExited; undefined once it no longer runs. */
  processExitedOf: (id: string) => Promise<void> | undefined,
): HealthProbes {
  return {
    async runProbe(containerId, argv, signal) {
      /** Whether the container's process exited by now or within the settle time. */
      const containerExited = async () => {
        const processExited = processExitedOf(containerId);
        if (processExited === undefined) return true; // no longer running
        return withinMs(processExited, KILLED_PROBE_SETTLE_MS);
      };
      let outcome: ProbeOutcome;
      try {
        outcome = await runExecProbe(execs, containerOf(containerId), containerId, argv, signal);
      } catch (err) {
        // A probe that could not start because its container was going away (or gone).
        if (!signal.aborted && (await containerExited())) {
          return { exitCode: -1, output: Buffer.alloc(0), containerExited: true };
        }
        throw err;
      }
      // Killed by a signal, and not by its own timeout (the monitor aborted it then).
      const killed = outcome.exitCode >= 128 && !signal.aborted;
      if (killed && (await containerExited())) return { ...outcome, containerExited: true };
      return outcome;
    },
  };
}

/** One probe as an exec: dockerd's cmdProbe (see execProbes). */
async function runExecProbe(
  execs: ProbeExecs,
  config: ContainerConfig | undefined,
  containerId: string,
  argv: string[],
  signal: AbortSignal,
): Promise<ProbeOutcome> {
  const id = execs.create(containerId, {
    cmd: argv,
    env: [],
    workingDir: config?.workingDir ?? '',
    user: config?.user ?? '',
    tty: false,
    attachStdin: false,
    attachStdout: true,
    attachStderr: true,
    privileged: false,
    detachKeys: '',
  });
  const chunks: Buffer[] = [];
  let kept = 0;
  // A kill before the exec's process exists is a no-op (it may still be starting in a slow
  // VM), so an aborted probe is killed again until its start settles.
  let retry: NodeJS.Timeout | undefined;
  const kill = () => void execs.kill(id, SIGKILL).catch(() => undefined);
  const onAbort = () => {
    kill();
    retry = setInterval(kill, 200);
  };
  signal.addEventListener('abort', onAbort);
  try {
    await execs.start(id, {
      write: (chunk) => {
        // One byte past the limit is enough to know the output was cut.
        if (kept <= MAX_HEALTH_OUTPUT) {
          chunks.push(chunk.data);
          kept += chunk.data.length;
        }
        return true;
      },
      drained: () => Promise.resolve(),
    });
    return { exitCode: execs.inspect(id).exitCode ?? -1, output: Buffer.concat(chunks) };
  } finally {
    clearInterval(retry);
    signal.removeEventListener('abort', onAbort);
    execs.remove(id);
  }
}
