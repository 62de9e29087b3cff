import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DataLossError } from '../common/errdefs';
import { zstdRleFrame, zstdSkippableFrame, zstdStoredFrame } from './testing/zstd-frames';
import { createZstdDecompress, MAX_WINDOW_BYTES } from './zstd';

async function decompress(input: Buffer, chunk = 1000): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < input.length; i += chunk) parts.push(input.subarray(i, i + chunk));
  const out: Buffer[] = [];
  await pipeline(Readable.from(parts), createZstdDecompress(), async (source: AsyncIterable<Buffer>) => {
    for await (const b of source) out.push(b);
  });
  return Buffer.concat(out);
}

describe('zstd decompression', () => {
  const data = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) % 251));

  it('decodes raw blocks across chunk boundaries of any size', async () => {
    const frame = zstdStoredFrame(data, { checksum: true });
    for (const chunk of [1, 3, 17, 4096, frame.length]) {
      assert.deepEqual(await decompress(frame, chunk), data, `chunk size ${chunk}`);
    }
  });

  it('decodes several frames, RLE blocks and skippable frames in one stream', async () => {
    const input = Buffer.concat([
      zstdStoredFrame(data.subarray(0, 1000)),
      zstdSkippableFrame(Buffer.from('skip me')),
      zstdRleFrame(0x61, 5000),
      zstdStoredFrame(Buffer.alloc(0)),
      zstdStoredFrame(data.subarray(1000)),
    ]);
    const expected = Buffer.concat([data.subarray(0, 1000), Buffer.alloc(5000, 0x61), data.subarray(1000)]);
    assert.deepEqual(await decompress(input, 7), expected);
  });

  it('refuses a frame declaring a window over the limit before decoding it', async () => {
    const windowLog = Math.log2(MAX_WINDOW_BYTES) + 1;
    await assert.rejects(decompress(zstdStoredFrame(data, { windowLog })), (err: unknown) => {
      assert.ok(err instanceof DataLossError);
      assert.match(err.message, /window size \d+ exceeds/);
      return true;
    });
    // The second frame of a stream is checked too.
    const second = Buffer.concat([
      zstdStoredFrame(data.subarray(0, 10)),
      zstdStoredFrame(data, { windowLog }),
    ]);
    await assert.rejects(decompress(second), DataLossError);
  });

  it('refuses frames that need a dictionary', async () => {
    await assert.rejects(decompress(zstdStoredFrame(data, { dictionaryId: 7 })), /dictionary/);
  });

  it('fails with DataLossError on truncated input, garbage and empty input', async () => {
    const frame = zstdStoredFrame(data);
    await assert.rejects(decompress(frame.subarray(0, frame.length - 10)), /zstd: unexpected EOF/);
    await assert.rejects(decompress(frame.subarray(0, 5)), DataLossError);
    await assert.rejects(decompress(Buffer.from('not zstd at all')), /magic number mismatch/);
    await assert.rejects(decompress(Buffer.alloc(0)), /unexpected EOF/);
  });
});
