import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatTop, psCpuTime, psStartTime, TOP_TITLES } from './top-stats';

describe('docker top formatting (ps -ef)', () => {
  it('TIME is [DD-]HH:MM:SS of cumulative CPU time', () => {
    assert.equal(psCpuTime(0), '00:00:00');
    assert.equal(psCpuTime(61_500), '00:01:01');
    assert.equal(psCpuTime((26 * 3600 + 5) * 1000), '1-02:00:05');
  });

  it('STIME is HH:MM within a day, else MonDD (local time)', () => {
    const start = new Date(2026, 10, 29, 9, 5, 0).getTime();
    assert.equal(psStartTime(start / 1000, start + 3600_000), '09:05');
    assert.equal(psStartTime(start / 1000, start + 3 * 24 * 3600_000), 'Nov29');
  });

  it('rows in the titles order; C is CPU time over elapsed time, in percent', () => {
    const now = Date.now();
    const top = formatTop(
      [
        {
          pid: 1,
          ppid: 0,
          uid: 0,
          user: 'root',
          startTimeSec: Math.floor(now / 1000) - 10,
          cpuTimeMs: 2500,
          elapsedMs: 10_000,
          tty: '?',
          cmd: 'sleep 1000',
        },
      ],
      now,
    );
    assert.deepEqual(top.titles, TOP_TITLES);
    assert.deepEqual(top.titles, ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD']);
    const [row] = top.processes;
    assert.deepEqual(
      [row?.[0], row?.[1], row?.[2], row?.[3], row?.[5], row?.[6], row?.[7]],
      ['root', '1', '0', '25', '?', '00:00:02', 'sleep 1000'],
    );
    assert.match(row?.[4] ?? '', /^\d\d:\d\d$/);
  });
});
