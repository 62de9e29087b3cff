import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  ZERO_TIME,
  formatRFC3339Nano,
  formatRFC3339NanoFixed,
  nowNs,
  parseRFC3339Nano,
  parseUnixTimestamp,
  timeOrUndefined,
  unixSeconds,
} from './time';

describe('time', () => {
  it('formats like Go RFC3339Nano (trailing zeros trimmed) and the fixed variant', () => {
    const ns = 1795976632_557322940n;
    assert.equal(formatRFC3339Nano(ns), '2026-11-29T18:23:52.55732294Z');
    assert.equal(formatRFC3339NanoFixed(ns), '2026-11-29T18:23:52.557322940Z');
    assert.equal(formatRFC3339Nano(1795976632_000000000n), '2026-11-29T18:23:52Z');
  });

  it('parses what it formats (property)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 4102444800_000000000n }), (ns) => {
        assert.equal(parseRFC3339Nano(formatRFC3339Nano(ns)), ns);
        assert.equal(parseRFC3339Nano(formatRFC3339NanoFixed(ns)), ns);
      }),
      { numRuns: 500 },
    );
  });

  it('treats the Go zero time as unset', () => {
    assert.equal(timeOrUndefined(ZERO_TIME), undefined);
    assert.equal(unixSeconds('2026-11-29T18:23:52.5Z'), 1795976632);
  });

  it('parses API timestamps: seconds, fractional seconds; rejects others', () => {
    assert.equal(parseUnixTimestamp('1795976788'), 1795976788_000000000n);
    assert.equal(parseUnixTimestamp('1795976788.5'), 1795976788_500000000n);
    assert.equal(parseUnixTimestamp('1795976788.000000001'), 1795976788_000000001n);
    assert.equal(parseUnixTimestamp('10s'), undefined);
    assert.equal(parseUnixTimestamp('2026-11-29T20:00:00Z'), undefined);
  });

  it('nowNs is monotonic and close to the wall clock', () => {
    const a = nowNs();
    const b = nowNs();
    assert.ok(b >= a);
    assert.ok(Math.abs(Number(a / 1_000_000n) - Date.now()) < 1000);
  });
});
