import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  execProbes,
  formatGoDuration,
  HealthMonitor,
  type ProbeExecs,
  limitProbeOutput,
  MAX_HEALTH_OUTPUT,
  probeCommand,
  startingHealth,
  type HealthClock,
  type HealthState,
  type ProbeOutcome,
} from './health';

const S = 1_000_000_000;

/** A FAKE clock: time moves only when the test advances it. */
class FakeClock implements HealthClock {
  now = 1_000n * BigInt(S);
  private timers: { at: bigint; fn: () => void; cancelled: boolean }[] = [];
  nowNs() {
    return this.now;
  }
  setTimeout(fn: () => void, ms: number) {
    const t = { at: this.now + BigInt(Math.round(ms * 1e6)), fn, cancelled: false };
    this.timers.push(t);
    return { cancel: () => (t.cancelled = true) };
  }
  /** Advances by `ms`, firing due timers in order, letting promises settle in between. */
  async advance(ms: number) {
    const end = this.now + BigInt(Math.round(ms * 1e6));
    for (;;) {
      await flush();
      const due = this.timers
        .filter((t) => !t.cancelled && t.at <= end)
        .sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0))[0];
      if (!due) break;
      due.cancelled = true;
      this.now = due.at;
      due.fn();
    }
    this.now = end;
    await flush();
  }
}

const flush = async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
};

function monitorWith(
  results: Array<ProbeOutcome | Error | 'hang'>,
  config: { interval?: number; timeout?: number; startPeriod?: number; retries?: number } = {},
) {
  const clock = new FakeClock();
  const updates: { state: HealthState; changed: boolean }[] = [];
  const calls: string[][] = [];
  const aborted: boolean[] = [];
  const monitor = new HealthMonitor({
    config: { test: ['CMD', 'check'], ...config },
    command: ['check'],
    startedAtNs: clock.now,
    state: startingHealth(),
    clock,
    run: (argv, signal) => {
      calls.push(argv);
      const next = results.shift() ?? { exitCode: 0, output: Buffer.alloc(0) };
      if (next === 'hang') {
        return new Promise((resolve) => {
          signal.addEventListener('abort', () => {
            aborted.push(true);
            resolve({ exitCode: 137, output: Buffer.from('partial') });
          });
        });
      }
      return next instanceof Error ? Promise.reject(next) : Promise.resolve(next);
    },
    onUpdate: (state, changed) => updates.push({ state, changed }),
  });
  return { clock, monitor, updates, calls, aborted };
}

const ok = (output = ''): ProbeOutcome => ({ exitCode: 0, output: Buffer.from(output) });
const fail = (code = 1, output = ''): ProbeOutcome => ({ exitCode: code, output: Buffer.from(output) });

describe('healthchecks (dockerd 20.10 health.go rules)', () => {
  it('the first probe runs one interval after the start (30 s by default), then every interval', async () => {
    const { clock, monitor, calls } = monitorWith([ok(), ok()]);
    monitor.start();
    await clock.advance(29_999);
    assert.equal(calls.length, 0);
    await clock.advance(1);
    assert.equal(calls.length, 1);
    await clock.advance(30_000);
    assert.equal(calls.length, 2);
    await monitor.stop();
  });

  it('exit 0 → healthy (one health_status change); failures count to retries → unhealthy', async () => {
    const { clock, monitor, updates } = monitorWith([ok('fine'), fail(), fail(), fail(2)], {
      interval: 1 * S,
      retries: 3,
    });
    monitor.start();
    await clock.advance(1000);
    assert.equal(updates[0]?.state.status, 'healthy');
    assert.equal(updates[0]?.changed, true);
    assert.deepEqual(
      updates[0]?.state.log.map((r) => [r.exitCode, r.output]),
      [[0, 'fine']],
    );
    await clock.advance(2000);
    assert.deepEqual(
      updates.map((u) => [u.state.status, u.state.failingStreak, u.changed]),
      [
        ['healthy', 0, true],
        ['healthy', 1, false],
        ['healthy', 2, false],
      ],
    );
    await clock.advance(1000);
    assert.deepEqual(updates.at(-1)?.state.status, 'unhealthy');
    assert.equal(updates.at(-1)?.state.failingStreak, 3);
    assert.equal(updates.at(-1)?.changed, true);
    await monitor.stop();
  });

  it('failures within the start period do not count while starting', async () => {
    const { clock, monitor, updates } = monitorWith([fail(), fail(), fail(), fail()], {
      interval: 1 * S,
      startPeriod: 2500 * 1_000_000,
      retries: 1,
    });
    monitor.start();
    await clock.advance(2000); // probes at 1 s and 2 s: inside the start period
    assert.deepEqual(
      updates.map((u) => [u.state.status, u.state.failingStreak]),
      [
        ['starting', 0],
        ['starting', 0],
      ],
    );
    await clock.advance(1000); // at 3 s: outside
    assert.deepEqual(updates.at(-1)?.state.status, 'unhealthy');
    await monitor.stop();
  });

  it('a probe past the timeout is aborted and recorded as -1 with dockerd’s text', async () => {
    const { clock, monitor, updates, aborted } = monitorWith(['hang'], { interval: 1 * S, timeout: 2 * S });
    monitor.start();
    await clock.advance(1000);
    await clock.advance(2000);
    assert.deepEqual(aborted, [true]);
    const last = updates.at(-1)?.state.log.at(-1);
    assert.equal(last?.exitCode, -1);
    assert.equal(last?.output, 'Health check exceeded timeout (2s): partial');
    await monitor.stop();
  });

  it('a probe that cannot start is recorded as -1 with the error', async () => {
    const { clock, monitor, updates } = monitorWith([new Error('container is not running')], {
      interval: 1 * S,
    });
    monitor.start();
    await clock.advance(1000);
    assert.deepEqual(updates[0]?.state.log[0]?.exitCode, -1);
    assert.deepEqual(updates[0]?.state.log[0]?.output, 'container is not running');
    await monitor.stop();
  });

  it('keeps the last 5 results', async () => {
    const { clock, monitor, updates } = monitorWith(
      Array.from({ length: 7 }, (_, i) => ok(String(i))),
      { interval: 1 * S },
    );
    monitor.start();
    await clock.advance(7000);
    assert.deepEqual(
      updates.at(-1)?.state.log.map((r) => r.output),
      ['2', '3', '4', '5', '6'],
    );
    await monitor.stop();
  });

  it('stop() aborts a probe in flight and drops its result', async () => {
    const { clock, monitor, updates, aborted } = monitorWith(['hang'], { interval: 1 * S });
    monitor.start();
    await clock.advance(1000);
    await monitor.stop();
    assert.deepEqual(aborted, [true]);
    assert.equal(updates.length, 0);
    await clock.advance(60_000);
    assert.equal(updates.length, 0);
  });
});

describe('a probe killed with its container (dockerd drops results once its monitor stopped)', () => {
  it('a result marked containerExited is neither recorded nor followed by another probe', async () => {
    const killed: ProbeOutcome = { ...fail(137), containerExited: true };
    const { clock, monitor, updates, calls } = monitorWith([killed], { interval: 1 * S });
    monitor.start();
    await clock.advance(1000);
    assert.equal(calls.length, 1);
    await clock.advance(10_000);
    assert.equal(calls.length, 1);
    assert.equal(updates.length, 0);
    await monitor.stop();
  });

  /** A FAKE exec service: every exec exits with `exitCode` at once, or fails to start (an Error). */
  function fakeExecs(exitCode: number | Error): ProbeExecs {
    return {
      create: () => 'e1',
      start: () => (exitCode instanceof Error ? Promise.reject(exitCode) : Promise.resolve()),
      inspect: () => ({ exitCode }) as ReturnType<ProbeExecs['inspect']>,
      kill: () => Promise.resolve(),
      remove: () => undefined,
    };
  }
  const run = (exitCode: number | Error, processExited: Promise<void> | undefined) =>
    execProbes(
      fakeExecs(exitCode),
      () => undefined,
      () => processExited,
    ).runProbe('c1', ['check'], new AbortController().signal);

  it("execProbes: a failed probe whose container's process exits within the settle time is marked", async () => {
    const soon = new Promise<void>((r) => setTimeout(r, 20));
    assert.equal((await run(137, soon)).containerExited, true);
    // Gone already (no longer running): marked at once.
    assert.equal((await run(137, undefined)).containerExited, true);
    // An ordinary failure is the probe's own result, whatever the container does.
    assert.equal((await run(1, undefined)).containerExited, undefined);
    // An exec that could not start because the container was going away: marked, not an error.
    const gone = new Promise<void>((r) => setTimeout(r, 20));
    assert.equal((await run(new Error('container is not running'), gone)).containerExited, true);
  });

  it('execProbes: an exec that cannot start in a container that runs on is the error it was', async () => {
    const never = new Promise<void>(() => undefined);
    await assert.rejects(
      run(new Error('exec: "check": executable file not found'), never),
      /executable file/,
    );
  });

  it('execProbes: a killed probe in a container that runs on is a result (after the settle time); others never wait', async () => {
    const never = new Promise<void>(() => undefined);
    const t0 = Date.now();
    const killed = await run(137, never);
    assert.equal(killed.containerExited, undefined);
    assert.equal(killed.exitCode, 137);
    assert.ok(Date.now() - t0 >= 1900, 'waited for the settle time');
    const t1 = Date.now();
    assert.equal((await run(0, never)).containerExited, undefined);
    assert.equal((await run(1, never)).containerExited, undefined);
    assert.ok(Date.now() - t1 < 100);
  });
});

describe('probeCommand', () => {
  it('CMD runs the argv, CMD-SHELL through the shell, NONE and empty mean none', () => {
    assert.deepEqual(probeCommand({ test: ['CMD', 'curl', '-f', 'x'] }, null), ['curl', '-f', 'x']);
    assert.deepEqual(probeCommand({ test: ['CMD-SHELL', 'exit 1'] }, null), ['/bin/sh', '-c', 'exit 1']);
    assert.deepEqual(probeCommand({ test: ['CMD-SHELL', 'x'] }, ['/bin/ash', '-e', '-c']), [
      '/bin/ash',
      '-e',
      '-c',
      'x',
    ]);
    assert.equal(probeCommand({ test: ['NONE'] }, null), undefined);
    assert.equal(probeCommand({ test: [] }, null), undefined);
    assert.equal(probeCommand(null, null), undefined);
  });
});

describe('formatGoDuration', () => {
  it('prints as Go’s time.Duration does', () => {
    assert.equal(formatGoDuration(30 * S), '30s');
    assert.equal(formatGoDuration(1.5 * S), '1.5s');
    assert.equal(formatGoDuration(90 * S), '1m30s');
    assert.equal(formatGoDuration(120 * S), '2m0s');
    assert.equal(formatGoDuration(3600 * S), '1h0m0s');
    assert.equal(formatGoDuration(500_000_000), '500ms');
    assert.equal(formatGoDuration(0), '0s');
  });
});

describe('limitProbeOutput', () => {
  it('keeps 4096 bytes and marks the cut with "..."', () => {
    assert.equal(limitProbeOutput(Buffer.from('short')), 'short');
    const long = limitProbeOutput(Buffer.alloc(MAX_HEALTH_OUTPUT + 10, 'a'));
    assert.equal(long.length, MAX_HEALTH_OUTPUT + 3);
    assert.ok(long.endsWith('a...'));
  });
});
