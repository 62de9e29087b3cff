import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import fc from 'fast-check';
import { InvalidParameterError } from '../common/errdefs';
import {
  familiarMatch,
  goPathMatch,
  listDangling,
  matchLabels,
  matchPruneLabels,
  parseGoDuration,
  parseUntil,
  pruneDanglingOnly,
  validateFilters,
  LIST_FILTERS,
} from './filters';

const invalid = (message: string) => (e: unknown) =>
  e instanceof InvalidParameterError && e.message === message;

describe('image filters', () => {
  it("validates names and dangling values with dockerd's texts", () => {
    assert.throws(() => validateFilters({ foo: ['x'] }, LIST_FILTERS), invalid("Invalid filter 'foo'"));
    assert.throws(() => listDangling({ dangling: ['maybe'] }), invalid("Invalid filter 'dangling=[maybe]'"));
    assert.throws(() => listDangling({ dangling: ['1'] }), invalid("Invalid filter 'dangling=[1]'"));
    assert.equal(listDangling({ dangling: ['true', 'false'] }), true);
    assert.equal(listDangling({}), undefined);
    assert.equal(pruneDanglingOnly({}), true);
    assert.equal(pruneDanglingOnly({ dangling: ['0'] }), false);
    assert.equal(pruneDanglingOnly({ dangling: ['false'] }), false);
  });

  it("matches references like Go's path.Match", () => {
    assert.equal(goPathMatch('busybox', 'busybox'), true);
    assert.equal(goPathMatch('busy*', 'busybox'), true);
    assert.equal(goPathMatch('*', 'org/app'), false, '* does not cross /');
    assert.equal(goPathMatch('*/*', 'org/app'), true);
    assert.equal(goPathMatch('imp:[0-9]', 'imp:4'), true);
    assert.equal(goPathMatch('imp:[^0-9]', 'imp:4'), false);
    assert.equal(goPathMatch('a?c', 'abc'), true);
    assert.equal(goPathMatch('a\\*c', 'a*c'), true);
    assert.equal(goPathMatch('a\\*c', 'abc'), false);
    for (const bad of ['[', 'a[', '[]', '[a-]', 'x\\']) {
      assert.throws(() => goPathMatch(bad, 'x'), invalid('syntax error in pattern'), bad);
    }
    assert.equal(familiarMatch('busybox', 'busybox:latest', 'busybox'), true);
    assert.equal(familiarMatch('busybox:1*', 'busybox:latest', 'busybox'), false);
    assert.equal(familiarMatch('127.0.0.1:5000/*', '127.0.0.1:5000/bb:v1', '127.0.0.1:5000/bb'), true);
  });

  it('a hostile pattern stays fast (no backtracking blow-up)', () => {
    const started = Date.now();
    assert.equal(goPathMatch(`${'*a'.repeat(40)}b`, 'a'.repeat(255)), false);
    assert.ok(Date.now() - started < 500);
  });

  it('property: an escaped string matches itself, and * matches any /-free string', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), (s) => {
        const escaped = Array.from(s)
          .map((c) => (/[*?[\\]/.test(c) ? `\\${c}` : c))
          .join('');
        assert.equal(goPathMatch(escaped, s), true);
        assert.equal(goPathMatch('*', s), !s.includes('/'));
      }),
      { numRuns: 300, interruptAfterTimeLimit: 2000 },
    );
  });

  it('label filters: key, key=value, all must match; label! excludes', () => {
    const labels = { a: 'b', 'c d': 'e' };
    assert.equal(matchLabels(['a'], labels), true);
    assert.equal(matchLabels(['a=b', 'c d=e'], labels), true);
    assert.equal(matchLabels(['a=x'], labels), false);
    assert.equal(matchLabels(['a'], null), false);
    assert.equal(matchPruneLabels({ 'label!': ['a=b'] }, labels), false);
    assert.equal(matchPruneLabels({ 'label!': ['a=x'], label: ['a'] }, labels), true);
  });

  it("until: durations, unix seconds, RFC 3339, and dockerd's error", () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseGoDuration('1h30m'), 90 * 60_000);
    assert.equal(parseUntil('10m', now), now - 600_000);
    assert.equal(parseUntil('1700000000', now), 1_700_000_000_000);
    assert.equal(parseUntil('1700000000.5', now), 1_700_000_000_500);
    assert.equal(parseUntil('2025-12-31T00:00:00Z', now), Date.parse('2025-12-31T00:00:00Z'));
    assert.equal(parseUntil('2025-12-31', now), Date.parse('2025-12-31T00:00:00Z'));
    assert.throws(() => parseUntil('xyz', now), invalid('failed to parse value as time or duration: "xyz"'));
  });
});
