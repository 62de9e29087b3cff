import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RESTART_DELAY_MAX_MS, RestartBackoff, policyWantsRestart, validateRestartPolicy } from './restart';
import type { RestartPolicy } from './types';

const policy = (name: string, maximumRetryCount = 0): RestartPolicy => ({ name, maximumRetryCount });
const exit = (
  exitCode: number,
  over: Partial<{ manuallyStopped: boolean; restartCount: number; runMs: number }> = {},
) => ({
  exitCode,
  manuallyStopped: false,
  restartCount: 0,
  runMs: 0,
  ...over,
});

describe('restart policies', () => {
  it('validates with dockerd 20.10 messages', () => {
    const message = (p: RestartPolicy): string => {
      try {
        validateRestartPolicy(p);
        return 'ok';
      } catch (err) {
        return (err as Error).message;
      }
    };
    assert.equal(message(policy('bogus')), "invalid restart policy 'bogus'");
    assert.equal(
      message(policy('always', 3)),
      "maximum retry count cannot be used with restart policy 'always'",
    );
    assert.equal(
      message(policy('always', -1)),
      "maximum retry count cannot be used with restart policy 'always'",
    );
    assert.equal(message(policy('no', 1)), "maximum retry count cannot be used with restart policy 'no'");
    assert.equal(message(policy('on-failure', -1)), 'maximum retry count cannot be negative');
    for (const ok of [
      policy(''),
      policy('', 1),
      policy('', -1),
      policy('on-failure', 5),
      policy('unless-stopped'),
    ])
      assert.equal(message(ok), 'ok');
  });

  it('always restarts after any exit, unless-stopped unless stopped by hand, on-failure on non-zero with retries left', () => {
    assert.equal(policyWantsRestart(policy('always'), exit(0, { manuallyStopped: true })), true);
    assert.equal(policyWantsRestart(policy('unless-stopped'), exit(0)), true);
    assert.equal(policyWantsRestart(policy('unless-stopped'), exit(1, { manuallyStopped: true })), false);
    assert.equal(policyWantsRestart(policy('on-failure'), exit(0)), false);
    assert.equal(policyWantsRestart(policy('on-failure'), exit(1, { restartCount: 1000 })), true);
    assert.equal(policyWantsRestart(policy('on-failure', 2), exit(1, { restartCount: 1 })), true);
    assert.equal(policyWantsRestart(policy('on-failure', 2), exit(1, { restartCount: 2 })), false);
    // dockerd ignores a manual stop for on-failure (it matters only on daemon start).
    assert.equal(policyWantsRestart(policy('on-failure'), exit(137, { manuallyStopped: true })), true);
    assert.equal(policyWantsRestart(policy('no'), exit(1)), false);
    assert.equal(policyWantsRestart(policy(''), exit(1)), false);
  });

  it('backs off from 100 ms, doubling up to a minute, and resets after a run of 10 s', () => {
    const b = new RestartBackoff();
    const delays: Array<number | undefined> = [];
    for (let i = 0; i < 12; i++) delays.push(b.next(policy('always'), exit(1)));
    assert.deepEqual(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]);
    assert.equal(RESTART_DELAY_MAX_MS, 60000);
    assert.equal(b.next(policy('always'), exit(1, { runMs: 9_999 })), 60000);
    assert.equal(b.next(policy('always'), exit(1, { runMs: 10_000 })), 100);
    assert.equal(b.next(policy('always'), exit(1)), 200);
  });

  it('a cancelled backoff (manual stop or kill) never restarts; no delay is consumed without a restart', () => {
    const b = new RestartBackoff();
    assert.equal(b.next(policy('on-failure'), exit(0)), undefined);
    assert.equal(b.next(policy('on-failure'), exit(1)), 100);
    b.cancel();
    assert.equal(b.cancelled, true);
    assert.equal(b.next(policy('always'), exit(1)), undefined);
  });
});
