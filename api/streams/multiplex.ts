/**
 * Docker's stdio multiplexing (stdcopy): each frame is an 8-byte header — stream byte (0 stdin,
 * 1 stdout, 2 stderr, 3 system error), three zero bytes, payload size as a big-endian uint32 —
 * then the payload. TTY streams are raw: no frames, stdout and stderr merged.
 */
export const RAW_STREAM = 'application/vnd.docker.raw-stream';
export const MULTIPLEXED_STREAM = 'application/vnd.docker.multiplexed-stream';

export type StreamId = 0 | 1 | 2 | 3;

const MAX_FRAME = 0xffffffff;

export function frame(stream: StreamId, payload: Buffer): Buffer {
  if (payload.length > MAX_FRAME) throw new RangeError('frame payload too large');
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

/** Encodes one chunk for the wire: a frame unless the stream is a TTY. Empty chunks are skipped. */
export function encodeChunk(tty: boolean, stream: StreamId, payload: Buffer): Buffer | undefined {
  if (payload.length === 0) return undefined;
  return tty ? payload : frame(stream, payload);
}

/**
 * The Content-Type of an attach/logs stream: API ≥ 1.42 distinguishes multiplexed from raw;
 * older versions always said raw-stream.
 */
export function streamContentType(tty: boolean, multiplexedTypeSupported: boolean): string {
  return !tty && multiplexedTypeSupported ? MULTIPLEXED_STREAM : RAW_STREAM;
}

export interface Frame {
  stream: number;
  payload: Buffer;
}

/** Incremental frame parser (tests and clients): feed bytes, get the complete frames. */
export class Demuxer {
  private pending: Buffer = Buffer.alloc(0);

  push(data: Buffer): Frame[] {
    this.pending = this.pending.length ? Buffer.concat([this.pending, data]) : data;
    const frames: Frame[] = [];
    while (this.pending.length >= 8) {
      const size = this.pending.readUInt32BE(4);
      if (this.pending.length < 8 + size) break;
      frames.push({ stream: this.pending[0] ?? 0, payload: Buffer.from(this.pending.subarray(8, 8 + size)) });
      this.pending = this.pending.subarray(8 + size);
    }
    return frames;
  }

  get leftover(): number {
    return this.pending.length;
  }
}

/** Splits a whole multiplexed buffer into stdout and stderr text. */
export function demuxAll(data: Buffer): { stdout: string; stderr: string; frames: Frame[] } {
  const frames = new Demuxer().push(data);
  let stdout = '';
  let stderr = '';
  for (const f of frames) {
    if (f.stream === 2) stderr += f.payload.toString();
    else stdout += f.payload.toString();
  }
  return { stdout, stderr, frames };
}
