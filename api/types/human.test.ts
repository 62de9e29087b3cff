import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { initialState } from '../../daemon/containers';
import { formatRFC3339Nano } from '../../daemon/time';
import { humanDuration, statusText } from './human';

const NOW = Date.parse('2026-11-29T18:00:00Z');
const ago = (ms: number): string => formatRFC3339Nano(BigInt(NOW - ms) * 1_000_000n);

describe('human strings', () => {
  it('HumanDuration wording', () => {
    const cases: Array<[number, string]> = [
      [0, 'Less than a second'],
      [999, 'Less than a second'],
      [1000, '1 second'],
      [59_000, '59 seconds'],
      [60_000, 'About a minute'],
      [119_000, 'About a minute'],
      [120_000, '2 minutes'],
      [59 * 60_000, '59 minutes'],
      [60 * 60_000, 'About an hour'],
      [90 * 60_000, '2 hours'],
      [47 * 3_600_000, '47 hours'],
      [48 * 3_600_000, '2 days'],
      [14 * 86_400_000, '2 weeks'],
      [60 * 86_400_000, '2 months'],
      [800 * 86_400_000, '2 years'],
    ];
    for (const [ms, text] of cases) assert.equal(humanDuration(ms), text, String(ms));
  });

  it('Status strings as docker ps prints them', () => {
    const created = initialState();
    assert.equal(statusText(created, NOW), 'Created');
    const running = { ...initialState(), running: true, startedAt: ago(3000) };
    assert.equal(statusText(running, NOW), 'Up 3 seconds');
    assert.equal(statusText({ ...running, startedAt: ago(10) }, NOW), 'Up Less than a second');
    assert.equal(statusText({ ...running, paused: true }, NOW), 'Up 3 seconds (Paused)');
    const exited = { ...initialState(), startedAt: ago(9000), finishedAt: ago(6000), exitCode: 0 };
    assert.equal(statusText(exited, NOW), 'Exited (0) 6 seconds ago');
    assert.equal(statusText({ ...exited, exitCode: 137 }, NOW), 'Exited (137) 6 seconds ago');
    assert.equal(statusText({ ...exited, removalInProgress: true }, NOW), 'Removal In Progress');
    assert.equal(statusText({ ...exited, dead: true }, NOW), 'Dead');
  });
});
