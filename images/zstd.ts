/**
 * zstd decompression as a Node stream, for layers (`application/vnd.oci.image.layer.v1.tar+zstd`)
 * and for load / import bodies whose magic says zstd. Node 20's zlib has no zstd, so the
 * decoding is fzstd's (pure JS, streaming, multi-frame and skippable frames).
 *
 * Threat: a layer comes from a registry or a tarball we do not trust. fzstd allocates a buffer of
 * the window size a frame header declares (up to 2 GiB) and shifts the whole window once per
 * block, so a hostile header costs memory and CPU far beyond the data it sends. A small frame
 * scanner walks the frame and block headers of the compressed stream ahead of the decoder and
 * refuses a window larger than MAX_WINDOW_BYTES (what `zstd --long=27` makes; the zstd CLI's
 * own default limit for decompression), or a dictionary (no layer format uses one), before the
 * decoder sees that frame. Content checksums are not checked here: the caller verifies the
 * sha256 of the decompressed bytes (the diffID), which is stronger.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { Decompress } from 'fzstd';
import { DataLossError } from '../common/errdefs';

/** The largest window a frame may ask for. */
export const MAX_WINDOW_BYTES = 128 * 1024 * 1024;

const ZSTD_MAGIC = 0xfd2fb528;

/**
 * Walks zstd frame structure as bytes arrive: frame headers (window size checked), block
 * headers (to find where each frame ends), checksums and skippable frames. Needs no more than
 * the 18 bytes of a frame header buffered at a time.
 */
class FrameScanner {
  /** Bytes still to skip (block content, checksum, skippable frame payload). */
  private skip = 0;
  /** Partial header bytes, when a header straddles two chunks. */
  private pending: Buffer = Buffer.alloc(0);
  private state: 'frame' | 'block' = 'frame';
  /** Whether the current frame ends with a 4-byte checksum. */
  private checksum = false;
  /** Whether the stream so far ends at a frame boundary. */
  get atBoundary(): boolean {
    return this.state === 'frame' && this.skip === 0 && this.pending.length === 0;
  }

  scan(chunk: Buffer): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length);
        this.skip -= n;
        buf = buf.subarray(n);
        if (this.skip > 0) return;
      }
      if (buf.length === 0) return;
      if (this.state === 'frame') {
        if (buf.length < 4) return this.keep(buf);
        const magic = buf.readUInt32LE(0);
        if ((magic & 0xfffffff0) === 0x184d2a50) {
          if (buf.length < 8) return this.keep(buf);
          this.skip = buf.readUInt32LE(4);
          buf = buf.subarray(8);
          continue;
        }
        if (magic !== ZSTD_MAGIC) throw new DataLossError('zstd: invalid input: magic number mismatch');
        if (buf.length < 5) return this.keep(buf);
        const fhd = buf[4] as number;
        const singleSegment = (fhd >> 5) & 1;
        const dictFlag = fhd & 3;
        const fcsFlag = fhd >> 6;
        if (fhd & 8) throw new DataLossError('zstd: invalid input: reserved frame header bit set');
        const dictBytes = dictFlag === 3 ? 4 : dictFlag;
        const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
        const headerLength = 5 + (singleSegment ? 0 : 1) + dictBytes + fcsBytes;
        if (buf.length < headerLength) return this.keep(buf);
        let window: number;
        if (singleSegment) {
          // The window is the content size.
          const at = 5 + dictBytes;
          window =
            fcsBytes === 1
              ? (buf[at] as number)
              : fcsBytes === 2
                ? buf.readUInt16LE(at) + 256
                : fcsBytes === 4
                  ? buf.readUInt32LE(at)
                  : Number(buf.readBigUInt64LE(at));
        } else {
          const wd = buf[5] as number;
          const base = 2 ** (10 + (wd >> 3));
          window = base + (base / 8) * (wd & 7);
        }
        if (window > MAX_WINDOW_BYTES) {
          throw new DataLossError(
            `zstd: window size ${window} exceeds the ${MAX_WINDOW_BYTES}-byte limit for decompression`,
          );
        }
        if (dictBytes > 0 && buf.readUIntLE(5 + (singleSegment ? 0 : 1), dictBytes) !== 0) {
          throw new DataLossError('zstd: a dictionary is required to decompress this frame');
        }
        this.checksum = ((fhd >> 2) & 1) === 1;
        this.state = 'block';
        buf = buf.subarray(headerLength);
        continue;
      }
      // A block header: 3 bytes, little-endian: last (1 bit), type (2 bits), size (21 bits).
      if (buf.length < 3) return this.keep(buf);
      const header = (buf[0] as number) | ((buf[1] as number) << 8) | ((buf[2] as number) << 16);
      const type = (header >> 1) & 3;
      const size = header >>> 3;
      if (type === 3) throw new DataLossError('zstd: invalid input: reserved block type');
      this.skip = type === 1 ? 1 : size;
      buf = buf.subarray(3);
      if ((header & 1) === 1) {
        // After its content and checksum (skipped first), a new frame starts.
        this.skip += this.checksum ? 4 : 0;
        this.state = 'frame';
      }
    }
  }

  private keep(buf: Buffer): void {
    this.pending = Buffer.from(buf);
  }
}

/** A Transform from zstd-compressed bytes to the plain bytes. Errors are DataLossErrors. */
export function createZstdDecompress(): Transform {
  const scanner = new FrameScanner();
  let output: Buffer[] = [];
  const decoder = new Decompress((data) => {
    // Copied: the decoder may reuse its block buffer.
    if (data.length > 0) output.push(Buffer.from(data));
  });
  const flush = (stream: Transform): void => {
    for (const b of output) stream.push(b);
    output = [];
  };
  let sawInput = false;
  return new Transform({
    transform(this: Transform, chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
      try {
        if (chunk.length > 0) sawInput = true;
        scanner.scan(chunk);
        decoder.push(chunk);
        flush(this);
        callback();
      } catch (err) {
        callback(asDataLoss(err));
      }
    },
    flush(this: Transform, callback: TransformCallback): void {
      try {
        if (!sawInput || !scanner.atBoundary) throw new DataLossError('zstd: unexpected EOF');
        decoder.push(new Uint8Array(0), true);
        flush(this);
        callback();
      } catch (err) {
        callback(asDataLoss(err));
      }
    },
  });
}

function asDataLoss(err: unknown): Error {
  if (err instanceof DataLossError) return err;
  const e = err as Error & { code?: unknown };
  // fzstd's errors carry a numeric code; 5 is "unexpected EOF".
  if (typeof e?.code === 'number') {
    return new DataLossError(e.code === 5 ? 'zstd: unexpected EOF' : `zstd: ${e.message}`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}
