/**
 * json-file log entries, byte for byte as dockerd 20.10 writes them:
 * `{"log":"<text>","stream":"stdout"|"stderr","time":"<RFC3339Nano>"}\n`.
 *
 * dockerd's escaping of the text (its jsonlog writer, not encoding/json; checked against the
 * reference dockerd): `"` and `\` get a backslash, "\n" and "\r" become \n and \r, every other byte
 * below 0x20 (tab included) becomes \u00XX with lowercase hex, `<` `>` `&` become \u003c \u003e
 * \u0026, U+2028 and U+2029 become \u2028 \u2029, and each byte that does not start a valid UTF-8
 * sequence (as Go's utf8.DecodeRune sees it: overlong forms, surrogates, past U+10FFFF, truncated)
 * becomes \ufffd — one per byte. Everything else (DEL and valid UTF-8 included) is copied.
 *
 * Entries are cut as dockerd's log copier with its 16 KiB buffer cuts them: an entry ends after a
 * "\n", or after 16 KiB without one (a partial message, which may split a UTF-8 sequence; each
 * half is then escaped as invalid, as dockerd does).
 *
 * A container printing short lines makes one entry per few bytes (`yes` writes 2-byte lines), so
 * the writer encodes a whole chunk of output in one pass into one buffer: no object, string or
 * Buffer per entry. `encodeEntryText` is the plain one-entry form of the same rules; the unit tests
 * check that both give the same bytes.
 */

/** Longest entry in bytes of output: dockerd's copier buffer. */
export const MAX_LOG_LINE = 16 * 1024;

/** Byte classes while scanning an entry's text. */
const COPY = 0;
const ESCAPE = 1;
const NEWLINE = 2;
const NON_ASCII = 3;

const CLASS = new Uint8Array(256);
for (let b = 0; b < 256; b++) {
  if (b === 0x0a) CLASS[b] = NEWLINE;
  else if (b >= 0x80) CLASS[b] = NON_ASCII;
  else if (b < 0x20 || b === 0x22 || b === 0x5c || b === 0x3c || b === 0x3e || b === 0x26) CLASS[b] = ESCAPE;
  else CLASS[b] = COPY;
}

const HEX = Buffer.from('0123456789abcdef', 'latin1');
const PREFIX = Buffer.from('{"log":"', 'latin1');
/** Output bytes one input byte can take at most (`\u00XX`, `\ufffd`). */
const MAX_EXPANSION = 6;

/**
 * Length of the valid UTF-8 sequence at data[i] (which is >= 0x80) that ends before `end`, or 0
 * when Go's utf8.DecodeRune would answer (RuneError, 1).
 */
function utf8Length(data: Buffer, i: number, end: number): number {
  const b0 = data[i] as number;
  if (b0 < 0xc2 || b0 > 0xf4) return 0;
  if (b0 < 0xe0) return i + 1 < end && ((data[i + 1] as number) & 0xc0) === 0x80 ? 2 : 0;
  const b1 = i + 1 < end ? (data[i + 1] as number) : 0;
  if (b0 < 0xf0) {
    const lo = b0 === 0xe0 ? 0xa0 : 0x80;
    const hi = b0 === 0xed ? 0x9f : 0xbf;
    if (b1 < lo || b1 > hi || i + 2 >= end) return 0;
    return ((data[i + 2] as number) & 0xc0) === 0x80 ? 3 : 0;
  }
  const lo = b0 === 0xf0 ? 0x90 : 0x80;
  const hi = b0 === 0xf4 ? 0x8f : 0xbf;
  if (b1 < lo || b1 > hi || i + 3 >= end) return 0;
  return ((data[i + 2] as number) & 0xc0) === 0x80 && ((data[i + 3] as number) & 0xc0) === 0x80 ? 4 : 0;
}

/** Where the entry starting at `start` ends (exclusive), in data[start, end). */
export function entryEnd(data: Buffer, start: number, end: number): number {
  const limit = Math.min(end, start + MAX_LOG_LINE);
  const nl = data.subarray(start, limit).indexOf(0x0a);
  return nl >= 0 ? start + nl + 1 : limit;
}

/** data[start, end) cut into entries (see the file comment). */
export function splitEntries(data: Buffer, start = 0, end = data.length): Buffer[] {
  const out: Buffer[] = [];
  while (start < end) {
    const stop = entryEnd(data, start, end);
    out.push(data.subarray(start, stop));
    start = stop;
  }
  return out;
}

/** The part of an entry after the text: `","stream":"…","time":"…"}` and the newline. */
export function entryTail(stream: 1 | 2, time: string): Buffer {
  return Buffer.from(`","stream":"${stream === 1 ? 'stdout' : 'stderr'}","time":"${time}"}\n`, 'latin1');
}

/**
 * Encodes whole chunks of output into one reusable buffer. Usage: `begin` (stream and time of
 * what follows), `encode` until the input is used up, taking `bytes()` out whenever `encode`
 * stopped early (then `reset`).
 */
export class JsonLogEncoder {
  private out: Buffer;
  private length = 0;
  private tail: Buffer = Buffer.alloc(0);

  constructor(capacity = 1 << 20) {
    this.out = Buffer.allocUnsafe(
      Math.max(capacity, 2 * (PREFIX.length + MAX_EXPANSION * MAX_LOG_LINE + 128)),
    );
  }

  /** Bytes encoded since the last reset. */
  get size(): number {
    return this.length;
  }

  /** The encoded bytes; valid until the next reset or encode. */
  bytes(): Buffer {
    return this.out.subarray(0, this.length);
  }

  reset(): void {
    this.length = 0;
  }

  /** Stream and time (RFC3339Nano text) of the entries encoded next. */
  begin(stream: 1 | 2, time: string): void {
    this.tail = entryTail(stream, time);
  }

  /**
   * Appends the entries of data[start, end) and returns where it stopped: `end`, or earlier when
   * the buffer is full or when `stopAt` bytes are encoded (checked before each entry, which is
   * where dockerd checks max-size). data[start] must begin an entry; `end` ends one (the last
   * entry may lack its "\n": a partial message).
   */
  encode(data: Buffer, start: number, end: number, stopAt = Infinity): number {
    const out = this.out;
    const tail = this.tail;
    const tailLength = tail.length;
    const limit = Math.min(stopAt, out.length - (PREFIX.length + MAX_EXPANSION * MAX_LOG_LINE + tailLength));
    let pos = this.length;
    let i = start;
    while (i < end && pos < limit) {
      out[pos] = 0x7b; // {"log":"
      out[pos + 1] = 0x22;
      out[pos + 2] = 0x6c;
      out[pos + 3] = 0x6f;
      out[pos + 4] = 0x67;
      out[pos + 5] = 0x22;
      out[pos + 6] = 0x3a;
      out[pos + 7] = 0x22;
      pos += 8;
      const stop = Math.min(end, i + MAX_LOG_LINE);
      // data[run, i) is text to copy as is, not yet copied.
      let run = i;
      for (;;) {
        if (i >= stop) {
          pos = copyRun(data, run, i, out, pos);
          break;
        }
        const b = data[i] as number;
        const cls = CLASS[b] as number;
        if (cls === COPY) {
          i++;
          continue;
        }
        if (cls === NEWLINE) {
          pos = copyRun(data, run, i, out, pos);
          out[pos] = 0x5c;
          out[pos + 1] = 0x6e;
          pos += 2;
          i++;
          break;
        }
        if (cls === NON_ASCII) {
          const n = utf8Length(data, i, stop);
          if (n === 0) {
            pos = copyRun(data, run, i, out, pos);
            pos = writeUnicodeEscape(out, pos, 0xfffd);
            i++;
            run = i;
          } else if (
            n === 3 &&
            b === 0xe2 &&
            data[i + 1] === 0x80 &&
            ((data[i + 2] as number) & 0xfe) === 0xa8
          ) {
            pos = copyRun(data, run, i, out, pos);
            pos = writeUnicodeEscape(out, pos, 0x2000 | ((data[i + 2] as number) - 0x80));
            i += 3;
            run = i;
          } else {
            i += n;
          }
          continue;
        }
        pos = copyRun(data, run, i, out, pos);
        if (b === 0x22 || b === 0x5c) {
          out[pos] = 0x5c;
          out[pos + 1] = b;
          pos += 2;
        } else if (b === 0x0d) {
          out[pos] = 0x5c;
          out[pos + 1] = 0x72;
          pos += 2;
        } else {
          pos = writeUnicodeEscape(out, pos, b);
        }
        i++;
        run = i;
      }
      if (tailLength <= 16) {
        for (let k = 0; k < tailLength; k++) out[pos + k] = tail[k] as number;
      } else {
        out.set(tail, pos);
      }
      pos += tailLength;
    }
    this.length = pos;
    return i;
  }
}

function copyRun(data: Buffer, from: number, to: number, out: Buffer, pos: number): number {
  const n = to - from;
  if (n <= 16) {
    for (let k = 0; k < n; k++) out[pos + k] = data[from + k] as number;
  } else {
    data.copy(out, pos, from, to);
  }
  return pos + n;
}

/** `\uXXXX`, lowercase hex. */
function writeUnicodeEscape(out: Buffer, pos: number, code: number): number {
  out[pos] = 0x5c;
  out[pos + 1] = 0x75;
  out[pos + 2] = HEX[(code >> 12) & 15] as number;
  out[pos + 3] = HEX[(code >> 8) & 15] as number;
  out[pos + 4] = HEX[(code >> 4) & 15] as number;
  out[pos + 5] = HEX[code & 15] as number;
  return pos + 6;
}

/**
 * One entry's line, written the plain way (a character at a time into a string); the reference
 * for the chunk encoder above. `text` is one entry's bytes (at most 16 KiB; a "\n" only at the end).
 */
export function encodeEntryText(text: Buffer, stream: 1 | 2, time: string): string {
  let s = '{"log":"';
  for (let i = 0; i < text.length;) {
    const b = text[i] as number;
    if (b >= 0x80) {
      const n = utf8Length(text, i, text.length);
      if (n === 0) {
        s += '\\ufffd';
        i++;
        continue;
      }
      const ch = text.toString('utf8', i, i + n);
      s += ch === '\u2028' ? '\\u2028' : ch === '\u2029' ? '\\u2029' : ch;
      i += n;
      continue;
    }
    if (b === 0x22) s += '\\"';
    else if (b === 0x5c) s += '\\\\';
    else if (b === 0x0a) s += '\\n';
    else if (b === 0x0d) s += '\\r';
    else if (b < 0x20 || b === 0x3c || b === 0x3e || b === 0x26)
      s += '\\u00' + b.toString(16).padStart(2, '0');
    else s += String.fromCharCode(b);
    i++;
  }
  return `${s}","stream":"${stream === 1 ? 'stdout' : 'stderr'}","time":"${time}"}\n`;
}
