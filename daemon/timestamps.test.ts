import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseApiTimestamp, parseGoDuration, resolveTimestamp } from './timestamps';

const NOW = 1795976788_250000000n; // 2026-11-29T18:26:28.25Z

function error(fn: () => unknown): string {
  try {
    fn();
    return 'no error';
  } catch (err) {
    return (err as Error).message;
  }
}

describe('API timestamps (dockerd timetypes)', () => {
  it('parses unix seconds with a fraction scaled by its length, as ParseTimestamps', () => {
    assert.equal(parseApiTimestamp('1795976788'), 1795976788_000000000n);
    assert.equal(parseApiTimestamp('1795976788.5'), 1795976788_500000000n);
    assert.equal(parseApiTimestamp('1795976788.000000001'), 1795976788_000000001n);
    assert.equal(parseApiTimestamp('1.1234567891'), 1_123456789n);
    assert.equal(parseApiTimestamp('-5'), -5_000000000n);
    assert.equal(parseApiTimestamp('0'), 0n);
  });

  it('rejects anything else with strconv.ParseInt text', () => {
    assert.equal(
      error(() => parseApiTimestamp('abc')),
      'strconv.ParseInt: parsing "abc": invalid syntax',
    );
    assert.equal(
      error(() => parseApiTimestamp('10m')),
      'strconv.ParseInt: parsing "10m": invalid syntax',
    );
    assert.equal(
      error(() => parseApiTimestamp('12.abc')),
      'strconv.ParseInt: parsing "abc": invalid syntax',
    );
    assert.equal(
      error(() => parseApiTimestamp(' 12')),
      'strconv.ParseInt: parsing " 12": invalid syntax',
    );
    assert.equal(
      error(() => parseApiTimestamp('99999999999999999999')),
      'strconv.ParseInt: parsing "99999999999999999999": value out of range',
    );
  });

  it('parses Go durations', () => {
    assert.equal(parseGoDuration('10s'), 10e9);
    assert.equal(parseGoDuration('1h30m'), 5400e9);
    assert.equal(parseGoDuration('1.5h'), 5400e9);
    assert.equal(parseGoDuration('300ms'), 300e6);
    assert.equal(parseGoDuration('-2m'), -120e9);
    assert.equal(parseGoDuration('0'), 0);
    for (const bad of ['1', '', 'abc', '1x', 'h', '.s']) assert.equal(parseGoDuration(bad), undefined, bad);
  });

  it('GetTimestamp: durations back from now in whole seconds, RFC3339 times and dates, unix seconds', () => {
    assert.equal(resolveTimestamp('10m', NOW), 1795976188_000000000n);
    assert.equal(resolveTimestamp('2026-11-29T18:26:28Z', NOW), 1795976788_000000000n);
    assert.equal(resolveTimestamp('2026-11-29T18:26:28.123456789Z', NOW), 1795976788_123456789n);
    assert.equal(resolveTimestamp('2026-11-29T20:26:28+02:00', NOW), 1795976788_000000000n);
    assert.equal(resolveTimestamp('2026-11-29T18:26Z', NOW), 1795976760_000000000n);
    assert.equal(resolveTimestamp('2020-01-01Z', NOW), 1577836800_000000000n);
    assert.equal(resolveTimestamp('1795976788.5', NOW), 1795976788_500000000n);
    assert.equal(resolveTimestamp('0', NOW), 0n);
    // Without a zone: the daemon's zone.
    const local = resolveTimestamp('2020-01-01', NOW);
    assert.equal(local, BigInt(new Date(2020, 0, 1).getTime()) * 1_000_000n);
  });

  it('GetTimestamp errors carry dockerd text', () => {
    assert.equal(
      error(() => resolveTimestamp('bogus', NOW)),
      'failed to parse value as time or duration: "bogus"',
    );
    assert.equal(
      error(() => resolveTimestamp('2020-13-01', NOW)),
      'parsing time "2020-13-01": month out of range',
    );
    assert.equal(
      error(() => resolveTimestamp('2021-02-29', NOW)),
      'parsing time "2021-02-29": day out of range',
    );
  });

  it('never throws anything but its own errors (property)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (s) => {
        for (const fn of [() => parseApiTimestamp(s), () => resolveTimestamp(s, NOW)]) {
          try {
            const v = fn();
            assert.equal(typeof v, 'bigint');
          } catch (err) {
            assert.match((err as Error).message, /strconv|parsing time|failed to parse/);
          }
        }
      }),
      { interruptAfterTimeLimit: 2000 },
    );
  });
});
