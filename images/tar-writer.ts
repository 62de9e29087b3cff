/**
 * A small tar writer producing the headers Go's archive/tar writes for dockerd's `docker save`
 * (pkg/archive over a directory tree): USTAR, the file-type bits kept in the mode field
 * (0100644, 040755, 0120777), uid/gid 0 as "root", seconds-resolution mtimes, devmajor/devminor
 * written as zeros, no padding to a record size after the two end blocks. Sizes beyond USTAR's
 * 8 GiB go into a PAX header as Go does.
 */

const BLOCK = 512;
const USTAR_MAX_OCTAL_11 = 0o77777777777;

export interface TarEntry {
  /** Relative path; directories end with "/". */
  name: string;
  type: 'file' | 'directory' | 'symlink';
  /** Permission bits (0o644); the type bits are added. */
  mode: number;
  /** Modification time in whole seconds since the epoch. */
  mtime: number;
  /** Exact byte count of the body (files only). */
  size?: number;
  linkname?: string;
  /** File content: bytes, or a producer of chunks that must yield exactly `size` bytes. */
  body?: Uint8Array | (() => AsyncIterable<Uint8Array>);
}

const TYPE_BITS: Record<TarEntry['type'], number> = {
  file: 0o100000,
  directory: 0o40000,
  symlink: 0o120000,
};
const TYPE_FLAG: Record<TarEntry['type'], string> = { file: '0', directory: '5', symlink: '2' };

function writeString(buf: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, 'utf8');
  if (bytes.length > length) throw new Error(`tar header field too long: ${JSON.stringify(value)}`);
  bytes.copy(buf, offset);
}

/** Go's formatOctal: zero-padded octal in length-1 digits, then NUL. */
function writeOctal(buf: Buffer, offset: number, length: number, value: number): void {
  const digits = value.toString(8).padStart(length - 1, '0');
  if (digits.length > length - 1) throw new Error(`tar numeric field overflow: ${value}`);
  buf.write(digits, offset, 'ascii');
  buf[offset + length - 1] = 0;
}

/** Splits a long name into USTAR prefix and name at a slash, as Go does; null when impossible. */
function splitUstarPath(name: string): { prefix: string; name: string } | null {
  const length = Buffer.byteLength(name);
  if (length <= 100) return { prefix: '', name };
  for (let i = name.length - 1; i > 0; i--) {
    if (name[i] !== '/') continue;
    const prefix = name.slice(0, i);
    const rest = name.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(rest) <= 100 && rest !== '') {
      return { prefix, name: rest };
    }
  }
  return null;
}

function header(
  name: string,
  typeflag: string,
  mode: number,
  size: number,
  mtime: number,
  linkname = '',
): Buffer {
  const buf = Buffer.alloc(BLOCK);
  const split = splitUstarPath(name);
  if (split === null) throw new Error(`tar entry name too long: ${JSON.stringify(name)}`);
  writeString(buf, 0, 100, split.name);
  writeOctal(buf, 100, 8, mode);
  writeOctal(buf, 108, 8, 0);
  writeOctal(buf, 116, 8, 0);
  writeOctal(buf, 124, 12, size);
  writeOctal(buf, 136, 12, Math.max(0, Math.floor(mtime)));
  buf.fill(0x20, 148, 156); // checksum placeholder
  buf.write(typeflag, 156, 'ascii');
  writeString(buf, 157, 100, linkname);
  buf.write('ustar\u000000', 257, 'binary');
  writeString(buf, 265, 32, 'root');
  writeString(buf, 297, 32, 'root');
  writeOctal(buf, 329, 8, 0);
  writeOctal(buf, 337, 8, 0);
  writeString(buf, 345, 155, split.prefix);
  let sum = 0;
  for (const byte of buf) sum += byte;
  writeOctal(buf, 148, 7, sum);
  buf[155] = 0x20;
  return buf;
}

/** A PAX extended header record set ("%d %s=%s\n", the length counting itself). */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return `${length}${body}`;
}

function padding(size: number): Buffer {
  const rest = size % BLOCK;
  return rest === 0 ? Buffer.alloc(0) : Buffer.alloc(BLOCK - rest);
}

/** The header block(s) of one entry. */
export function entryHeader(entry: TarEntry): Buffer[] {
  const size = entry.type === 'file' ? (entry.size ?? 0) : 0;
  const mode = (entry.mode & 0o7777) | TYPE_BITS[entry.type];
  const out: Buffer[] = [];
  let ustarSize = size;
  if (size > USTAR_MAX_OCTAL_11) {
    const records = Buffer.from(paxRecord('size', String(size)), 'utf8');
    const slash = entry.name.replace(/\/$/, '').lastIndexOf('/');
    const dir = slash === -1 ? '' : entry.name.slice(0, slash + 1);
    const paxName = `${dir}PaxHeaders.0/${entry.name.slice(slash + 1)}`.slice(0, 100);
    out.push(header(paxName, 'x', 0o644, records.length, entry.mtime), records, padding(records.length));
    ustarSize = 0;
  }
  out.push(header(entry.name, TYPE_FLAG[entry.type], mode, ustarSize, entry.mtime, entry.linkname ?? ''));
  return out;
}

/**
 * The tar stream of `entries`, in order. A file body that yields more or fewer bytes than its
 * `size` fails the stream (the header is already out, so the archive would be corrupt).
 */
export async function* tarStream(
  entries: AsyncIterable<TarEntry> | Iterable<TarEntry>,
): AsyncGenerator<Buffer> {
  for await (const entry of entries) {
    for (const block of entryHeader(entry)) if (block.length > 0) yield block;
    if (entry.type !== 'file') continue;
    const size = entry.size ?? 0;
    let written = 0;
    const body = entry.body;
    if (body instanceof Uint8Array) {
      written = body.byteLength;
      if (written !== size) throw new Error(`tar entry ${entry.name}: ${written} bytes, header says ${size}`);
      if (written > 0) yield Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    } else if (body !== undefined) {
      for await (const chunk of body()) {
        written += chunk.byteLength;
        if (written > size) throw new Error(`tar entry ${entry.name}: more than the ${size} bytes announced`);
        yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      }
      if (written !== size) throw new Error(`tar entry ${entry.name}: ${written} bytes, header says ${size}`);
    } else if (size !== 0) {
      throw new Error(`tar entry ${entry.name}: no body for ${size} bytes`);
    }
    const pad = padding(size);
    if (pad.length > 0) yield pad;
  }
  yield Buffer.alloc(BLOCK * 2);
}
