import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Request } from 'express';
import fc from 'fast-check';
import { parseFilters, queryBool, queryInt } from './query';

function req(query: Record<string, unknown>): Request {
  return { query } as unknown as Request;
}

describe('query parameters', () => {
  it('booleans: false iff absent, "", "0", "no", "false", "none" (any case)', () => {
    for (const v of ['', '0', 'no', 'false', 'none', 'FALSE', ' No '])
      assert.equal(queryBool(req({ x: v }), 'x'), false, v);
    for (const v of ['1', 'true', 'True', 'yes', 'anything'])
      assert.equal(queryBool(req({ x: v }), 'x'), true, v);
    assert.equal(queryBool(req({}), 'x'), false);
    assert.equal(queryBool(req({ x: ['1', '0'] }), 'x'), true);
  });

  it('integers: empty is unset, garbage is 400 with Go text', () => {
    assert.equal(queryInt(req({ t: '5' }), 't'), 5);
    assert.equal(queryInt(req({ t: '-1' }), 't'), -1);
    assert.equal(queryInt(req({ t: '' }), 't'), undefined);
    assert.throws(() => queryInt(req({ t: 'abc' }), 't'), /strconv\.Atoi: parsing "abc": invalid syntax/);
  });

  it('filters: map and list forms mean the same (property)', () => {
    const key = fc.stringMatching(/^[a-z][a-z-]{0,8}$/);
    const value = fc.string({ maxLength: 12 });
    fc.assert(
      fc.property(fc.dictionary(key, fc.uniqueArray(value, { maxLength: 4 })), (filters) => {
        const listForm = JSON.stringify(filters);
        const mapForm = JSON.stringify(
          Object.fromEntries(
            Object.entries(filters).map(([k, vs]) => [k, Object.fromEntries(vs.map((v) => [v, true]))]),
          ),
        );
        const a = parseFilters(listForm);
        const b = parseFilters(mapForm);
        for (const k of Object.keys(filters))
          assert.deepEqual([...(a[k] ?? [])].sort(), [...(b[k] ?? [])].sort());
      }),
      { numRuns: 300 },
    );
  });

  it('filters: empty, null and malformed input', () => {
    assert.deepEqual(parseFilters(undefined), {});
    assert.deepEqual(parseFilters(''), {});
    assert.deepEqual(parseFilters('null'), {});
    assert.throws(() => parseFilters('xx'), /invalid filter/);
    assert.throws(() => parseFilters('{"a":1}'), /must be a list or a map/);
    assert.throws(() => parseFilters('[1]'), /not an object/);
  });
});
