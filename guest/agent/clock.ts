/**
 * SyncClock: the guest's wall clock stands still while the host has the VM paused (docker pause,
 * commit), so after a resume the host sends its time and the agent steps the clock by the
 * difference. Node cannot set the clock itself: capsule-setclock (guest/clock/) applies a step in
 * microseconds, read and applied in one go, so the time it takes to start does not end up in it.
 */
import { execFile } from 'node:child_process';
import { AgentError } from './errors';

/** Differences below this are left alone (transport latency and clock granularity). */
export const CLOCK_TOLERANCE_MS = 20;

export interface ClockOptions {
  setClockPath: string;
  now?: () => number;
  /** Runs the helper; replaced in tests (stepping the test machine's clock is not an option). */
  run?: (path: string, args: string[]) => Promise<void>;
}

function runHelper(file: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (err) reject(new AgentError('Internal', `capsule-setclock failed: ${stderr.trim() || err.message}`));
      else resolve();
    });
  });
}

/** Steps the clock to `hostUnixMs` when it is further off than the tolerance; returns the step. */
export async function syncClock(hostUnixMs: number, opts: ClockOptions): Promise<number> {
  if (!Number.isFinite(hostUnixMs) || hostUnixMs <= 0) {
    throw new AgentError('InvalidArgument', `invalid host time: ${hostUnixMs}`);
  }
  const stepMs = Math.round(hostUnixMs - (opts.now ?? Date.now)());
  if (Math.abs(stepMs) < CLOCK_TOLERANCE_MS) return 0;
  await (opts.run ?? runHelper)(opts.setClockPath, [String(stepMs * 1000)]);
  return stepMs;
}
