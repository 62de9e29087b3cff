import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Demuxer, MULTIPLEXED_STREAM, RAW_STREAM, encodeChunk, frame, streamContentType } from './multiplex';

describe('stdio multiplexing', () => {
  it('writes the 8-byte header: stream, 0, 0, 0, big-endian size', () => {
    assert.deepEqual([...frame(1, Buffer.from('hello-exec\n'))].slice(0, 8), [1, 0, 0, 0, 0, 0, 0, 11]);
    assert.deepEqual([...frame(2, Buffer.alloc(0x0102))].slice(0, 8), [2, 0, 0, 0, 0, 0, 1, 2]);
  });

  it('round-trips any sequence of frames split at any points (property)', () => {
    const chunk = fc.record({
      stream: fc.constantFrom(1 as const, 2 as const),
      data: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    });
    fc.assert(
      fc.property(
        fc.array(chunk, { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (chunks, cuts) => {
          const wire = Buffer.concat(
            chunks.map((c) => encodeChunk(false, c.stream, Buffer.from(c.data)) ?? Buffer.alloc(0)),
          );
          const points = [...new Set(cuts.map((c) => (wire.length ? c % wire.length : 0)))].sort(
            (a, b) => a - b,
          );
          const d = new Demuxer();
          const frames = [];
          let last = 0;
          for (const p of [...points, wire.length]) {
            frames.push(...d.push(wire.subarray(last, p)));
            last = p;
          }
          assert.deepEqual(
            frames.map((f) => [f.stream, Buffer.from(f.payload).toString('hex')]),
            chunks.map((c) => [c.stream, Buffer.from(c.data).toString('hex')]),
          );
          assert.equal(d.leftover, 0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('TTY streams are raw; empty chunks are skipped; content types by version', () => {
    assert.equal(encodeChunk(true, 2, Buffer.from('x'))?.toString(), 'x');
    assert.equal(encodeChunk(false, 1, Buffer.alloc(0)), undefined);
    assert.equal(streamContentType(false, true), MULTIPLEXED_STREAM);
    assert.equal(streamContentType(false, false), RAW_STREAM);
    assert.equal(streamContentType(true, true), RAW_STREAM);
  });
});
