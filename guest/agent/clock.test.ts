import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLOCK_TOLERANCE_MS, syncClock } from './clock';

/** A fake helper runner: records the calls instead of stepping this machine's clock. */
function recorder() {
  const calls: Array<{ path: string; args: string[] }> = [];
  return { calls, run: (path: string, args: string[]) => (calls.push({ path, args }), Promise.resolve()) };
}

describe('syncClock', () => {
  it('steps a clock that stood still during a pause by the difference, in microseconds', async () => {
    const fake = recorder();
    const step = await syncClock(1_000_005_000, {
      setClockPath: '/agent/bin/capsule-setclock',
      now: () => 1_000_000_000,
      run: fake.run,
    });
    assert.equal(step, 5000);
    assert.deepEqual(fake.calls, [{ path: '/agent/bin/capsule-setclock', args: ['5000000'] }]);
  });

  it('steps back a clock that is ahead; leaves one within the tolerance alone', async () => {
    const fake = recorder();
    assert.equal(
      await syncClock(1_000_000_000, { setClockPath: 'c', now: () => 1_000_000_250, run: fake.run }),
      -250,
    );
    assert.deepEqual(fake.calls[0]?.args, ['-250000']);
    const near = recorder();
    assert.equal(
      await syncClock(1_000_000_000 + CLOCK_TOLERANCE_MS - 1, {
        setClockPath: 'c',
        now: () => 1_000_000_000,
        run: near.run,
      }),
      0,
    );
    assert.deepEqual(near.calls, []);
  });

  it('refuses a host time that is not a time', async () => {
    await assert.rejects(
      syncClock(Number.NaN, { setClockPath: 'c', run: recorder().run }),
      /invalid host time/,
    );
    await assert.rejects(syncClock(-1, { setClockPath: 'c', run: recorder().run }), /invalid host time/);
  });
});
