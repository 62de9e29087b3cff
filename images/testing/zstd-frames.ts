/**
 * Hand-made zstd frames for tests (no encoder needed): raw ("stored") and RLE blocks are valid
 * zstd that any decoder must accept. Real compressed blocks come from skopeo in the integration
 * tests.
 */

export interface FrameOptions {
  /** log2 of the declared window size (10…41); default 20 (1 MiB). */
  windowLog?: number;
  /** Split raw blocks at this size (≤ 128 KiB); default 128 KiB. */
  blockSize?: number;
  /** Declare a dictionary id (decoders without the dictionary must refuse). */
  dictionaryId?: number;
  /** Append a (fake, zero) content checksum and set the flag. */
  checksum?: boolean;
}

function blockHeader(last: boolean, type: number, size: number): Buffer {
  const v = (last ? 1 : 0) | (type << 1) | (size << 3);
  return Buffer.from([v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff]);
}

/** One zstd frame holding `data` in raw blocks. */
export function zstdStoredFrame(data: Buffer, options: FrameOptions = {}): Buffer {
  const windowLog = options.windowLog ?? 20;
  const blockSize = Math.min(options.blockSize ?? 128 * 1024, 128 * 1024);
  const dict = options.dictionaryId !== undefined;
  const fhd = (options.checksum ? 4 : 0) | (dict ? 3 : 0);
  const parts: Buffer[] = [Buffer.from([0x28, 0xb5, 0x2f, 0xfd, fhd, (windowLog - 10) << 3])];
  if (dict) {
    const id = Buffer.alloc(4);
    id.writeUInt32LE(options.dictionaryId ?? 0);
    parts.push(id);
  }
  if (data.length === 0) parts.push(blockHeader(true, 0, 0));
  for (let at = 0; at < data.length; at += blockSize) {
    const block = data.subarray(at, at + blockSize);
    parts.push(blockHeader(at + blockSize >= data.length, 0, block.length), block);
  }
  if (options.checksum) parts.push(Buffer.alloc(4));
  return Buffer.concat(parts);
}

/** One zstd frame of `count` copies of `byte` in a single RLE block (count ≤ 128 KiB). */
export function zstdRleFrame(byte: number, count: number): Buffer {
  return Buffer.concat([
    Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, (20 - 10) << 3]),
    blockHeader(true, 1, count),
    Buffer.from([byte]),
  ]);
}

/** A skippable frame (magic 0x184D2A5?) with `payload`. */
export function zstdSkippableFrame(payload: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(0x184d2a50, 0);
  header.writeUInt32LE(payload.length, 4);
  return Buffer.concat([header, payload]);
}
