/**
 * Restart policies as dockerd applies them (moby's restartmanager and its callers):
 *
 * - `no` (or ""): never restarted.
 * - `always`: restarted after every exit, and started again when the daemon starts, even after a
 *   manual stop.
 * - `unless-stopped`: as `always`, except after a manual stop (docker stop/kill), which survives a
 *   daemon restart.
 * - `on-failure[:N]`: restarted after a non-zero exit while fewer than N restarts happened (N = 0:
 *   no limit).
 *
 * The delay before each restart starts at 100 ms and doubles up to a minute; a run that lasted
 * 10 s or more resets it. A manual stop or kill cancels any pending or future restart of the
 * current run ("exit on next"); a manual start resets the count and the backoff.
 */
import { InvalidParameterError } from '../common/errdefs';
import type { RestartPolicy } from './types';

export const RESTART_DELAY_INITIAL_MS = 100;
export const RESTART_DELAY_MAX_MS = 60_000;
/** A run at least this long resets the backoff. */
export const RESTART_RESET_AFTER_MS = 10_000;

/** Time and timers for restart backoff; tests inject a manual clock. */
export interface RestartClock {
  /** Milliseconds, monotonic enough to measure a run's duration. */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: RestartClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** dockerd's validateRestartPolicy (same messages on create and update). */
export function validateRestartPolicy(policy: RestartPolicy): void {
  switch (policy.name) {
    case 'always':
    case 'unless-stopped':
    case 'no':
      if (policy.maximumRetryCount !== 0) {
        throw new InvalidParameterError(
          `maximum retry count cannot be used with restart policy '${policy.name}'`,
        );
      }
      return;
    case 'on-failure':
      if (policy.maximumRetryCount < 0)
        throw new InvalidParameterError('maximum retry count cannot be negative');
      return;
    case '':
      return;
    default:
      throw new InvalidParameterError(`invalid restart policy '${policy.name}'`);
  }
}

export function isNoRestart(policy: RestartPolicy): boolean {
  return policy.name === '' || policy.name === 'no';
}

/** Whether the policy asks for a restart after this exit (no backoff, no cancellation). */
export function policyWantsRestart(
  policy: RestartPolicy,
  exit: { exitCode: number; manuallyStopped: boolean; restartCount: number },
): boolean {
  switch (policy.name) {
    case 'always':
      return true;
    case 'unless-stopped':
      return !exit.manuallyStopped;
    case 'on-failure': {
      const max = policy.maximumRetryCount;
      return exit.exitCode !== 0 && (max === 0 || exit.restartCount < max);
    }
    default:
      return false;
  }
}

/**
 * One container's restart state between a manual start and the next one: the backoff delay and
 * whether a manual stop cancelled restarts.
 */
export class RestartBackoff {
  private delayMs = 0;
  private cancelledFlag = false;

  get cancelled(): boolean {
    return this.cancelledFlag;
  }

  /** A manual stop or kill: the current run is not restarted. */
  cancel(): void {
    this.cancelledFlag = true;
  }

  /**
   * Decides after an exit: the delay before restarting, or undefined for no restart. Advances the
   * backoff only when it restarts.
   */
  next(
    policy: RestartPolicy,
    exit: { exitCode: number; manuallyStopped: boolean; restartCount: number; runMs: number },
  ): number | undefined {
    if (isNoRestart(policy) || this.cancelledFlag) return undefined;
    if (!policyWantsRestart(policy, exit)) return undefined;
    if (exit.runMs >= RESTART_RESET_AFTER_MS) this.delayMs = 0;
    this.delayMs =
      this.delayMs === 0 ? RESTART_DELAY_INITIAL_MS : Math.min(this.delayMs * 2, RESTART_DELAY_MAX_MS);
    return this.delayMs;
  }
}
