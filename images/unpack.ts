/**
 * Safe layer extraction.
 *
 * Threat: a layer tar comes from a registry we do not control, and we extract it as root. A
 * hostile tar tries to write outside the layer directory — entry names with `..` or absolute
 * paths, a symlink entry followed by an entry written "through" it (`evil -> /` then
 * `evil/etc/passwd`), a hardlink whose target lies outside the root or behind a symlink (which
 * would make a host file writable from the container), device nodes (a container with
 * /dev/sda-like nodes in its rootfs), forged overlay metadata (trusted.overlay.* xattrs) and
 * malformed whiteouts (`.wh.`, `.wh..`, `.wh...`) that would whiteout the parent or escape.
 *
 * Defence: every entry name is cleaned lexically and rejected if it climbs above the root
 * (absolute names are made relative, as dockerd does). Parent directories are walked one
 * component at a time with lstat, never following a symlink: a missing component is created as a
 * real directory, a symlink or non-directory component aborts the extraction. Files are opened
 * with O_CREAT|O_EXCL|O_NOFOLLOW after whatever was at that name is removed (unlinking never
 * follows), and ownership, mode and times are set through the file descriptor; symlinks get lchown
 * and lutimes. Hardlink targets go through the same checks and must exist inside this layer.
 * Character and block devices are skipped (as rootless dockerd does), except the 0/0 character
 * device that is an overlay whiteout. Deferred directory metadata is applied at the end only after
 * the directory path is walked again with lstat, because a later entry may have replaced it.
 * These checks are sound because extraction happens in a fresh private temp directory that only
 * this function writes to, one entry at a time; the directory is renamed into place afterwards.
 *
 * Whiteouts: `.wh.<name>` becomes an overlay whiteout (character device 0/0, via mknod(1), Node
 * has no mknod) and `.wh..wh..opq` marks its directory opaque (xattr trusted.overlay.opaque=y via
 * setfattr(1) from Debian's `attr`). Other `.wh..wh.` names (aufs metadata) are ignored.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, promises as fs, constants as fsConstants } from 'node:fs';
import * as path from 'node:path';
import { PassThrough, pipeline, type Readable } from 'node:stream';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import * as tar from 'tar-stream';
import { DataLossError, NotImplementedError, SystemError } from '../common/errdefs';
import type { Logger } from '../common/logger';
import { cleanEntryName } from '../common/rootfs-archive';
import { createZstdDecompress } from './zstd';

const execFileAsync = promisify(execFile);

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';
const ALLOWED_XATTR = (name: string): boolean => name.startsWith('user.') || name === 'security.capability';

export type Compression = 'gzip' | 'none' | 'zstd' | 'bzip2' | 'xz';

/** Detects the compression of a layer blob from its first bytes. */
export function detectCompression(head: Uint8Array): Compression {
  const b = (i: number): number => head[i] ?? -1;
  if (b(0) === 0x1f && b(1) === 0x8b) return 'gzip';
  if (b(0) === 0x28 && b(1) === 0xb5 && b(2) === 0x2f && b(3) === 0xfd) return 'zstd';
  if (b(0) === 0x42 && b(1) === 0x5a && b(2) === 0x68) return 'bzip2';
  if (b(0) === 0xfd && b(1) === 0x37 && b(2) === 0x7a && b(3) === 0x58 && b(4) === 0x5a && b(5) === 0x00)
    return 'xz';
  return 'none';
}

/**
 * The streams that turn `compression` into a plain tar: none, gunzip or the zstd decoder.
 * NotImplementedError (dockerd's "unsupported compression format") for bzip2 and xz.
 */
export function decompressors(compression: Compression, what = 'layer'): NodeJS.ReadWriteStream[] {
  switch (compression) {
    case 'none':
      return [];
    case 'gzip':
      // 64 KiB output chunks instead of zlib's 16 KiB: a quarter of the callbacks, tar-parser
      // chunks and file writes; ≈ 30 % less CPU unpacking a 25 MiB layer (docs/performance.md).
      return [zlib.createGunzip({ chunkSize: 64 * 1024 })];
    case 'zstd':
      return [createZstdDecompress()];
    default:
      throw new NotImplementedError(`unsupported ${what} compression: ${compression}`);
  }
}

/** A stream whose compression was read off its first bytes; `source()` yields all of it again. */
export interface PeekedStream {
  compression: Compression;
  source(): AsyncGenerator<Buffer>;
}

/**
 * Reads just enough of `input` to tell its compression (the longest magic is 6 bytes), without
 * losing what it read: `source()` yields those chunks first, then the rest, checking `signal`.
 */
export async function peekCompression(
  input: AsyncIterable<Uint8Array>,
  signal?: AbortSignal,
): Promise<PeekedStream> {
  const iterator = input[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let headLength = 0;
  let ended = false;
  while (headLength < 6) {
    const next = await iterator.next();
    if (next.done) {
      ended = true;
      break;
    }
    head.push(Buffer.from(next.value));
    headLength += next.value.byteLength;
  }
  async function* source(): AsyncGenerator<Buffer> {
    for (const chunk of head) yield chunk;
    if (ended) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      signal?.throwIfAborted();
      yield Buffer.from(next.value);
    }
  }
  return { compression: detectCompression(Buffer.concat(head)), source };
}

export class LayerBreakoutError extends DataLossError {}

/** A tar header as parsed; fields may be missing in hostile or odd archives. */
export type EntryHeader = Partial<tar.Header> & { name: string; pax?: unknown };

/** An entry body: tar-stream's (streamx) readable. */
type EntryBody = AsyncIterable<Uint8Array>;

function breakout(message: string): LayerBreakoutError {
  return new LayerBreakoutError(`failed to register layer: ${message}`);
}

export interface ExtractOptions {
  /** Called with the count of (compressed) input bytes consumed. */
  onInputBytes?: (bytes: number) => void;
  signal?: AbortSignal;
  log?: Logger;
}

export interface ExtractResult {
  /** sha256 of the uncompressed tar stream: "sha256:<hex>". */
  diffID: string;
  /** Length of the uncompressed tar stream. */
  tarSize: number;
}

interface DirMeta {
  mode: number;
  uid: number;
  gid: number;
  mtime?: Date;
}

/** Extracts one tar stream into `dest` (an existing, empty, private directory). */
class Extractor {
  /** Relative paths known to be real directories created or verified by us ("" is the root). */
  private readonly realDirs = new Set<string>(['']);
  /** Directory metadata applied at the end (mode last, so read-only dirs do not block writes). */
  private readonly dirMeta = new Map<string, DirMeta>();
  private readonly isRoot = process.getuid?.() === 0;

  constructor(
    private readonly dest: string,
    private readonly log?: Logger,
  ) {}

  private abs(rel: string): string {
    return rel === '' ? this.dest : path.join(this.dest, rel);
  }

  /** Forgets what we knew about `rel` and everything below it (it was removed or replaced). */
  private forget(rel: string): void {
    const prefix = rel + '/';
    for (const d of this.realDirs) if (d === rel || d.startsWith(prefix)) this.realDirs.delete(d);
    for (const d of this.dirMeta.keys()) if (d === rel || d.startsWith(prefix)) this.dirMeta.delete(d);
  }

  /**
   * Makes every component of `rel` a real directory, creating missing ones (0755, root), never
   * following a symlink. Throws LayerBreakoutError on a symlink or non-directory component.
   */
  private async ensureDir(rel: string, entryName: string): Promise<void> {
    if (this.realDirs.has(rel)) return;
    const parts = rel.split('/');
    let current = '';
    for (const part of parts) {
      current = current === '' ? part : `${current}/${part}`;
      if (this.realDirs.has(current)) continue;
      const abs = this.abs(current);
      let st;
      try {
        st = await fs.lstat(abs);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        await fs.mkdir(abs, { mode: 0o755 });
        await fs.chmod(abs, 0o755);
        this.realDirs.add(current);
        continue;
      }
      if (st.isSymbolicLink()) {
        throw breakout(
          `${JSON.stringify(entryName)}: path goes through the symlink ${JSON.stringify(current)}`,
        );
      }
      if (!st.isDirectory()) {
        throw breakout(`${JSON.stringify(entryName)}: ${JSON.stringify(current)} is not a directory`);
      }
      this.realDirs.add(current);
    }
  }

  /** Checks, without creating anything, that every component of `rel` is a real directory. */
  private async isRealDirPath(rel: string): Promise<boolean> {
    if (rel === '') return true;
    let current = '';
    for (const part of rel.split('/')) {
      current = current === '' ? part : `${current}/${part}`;
      try {
        const st = await fs.lstat(this.abs(current));
        if (!st.isDirectory()) return false;
      } catch {
        return false;
      }
    }
    return true;
  }

  /** Removes whatever is at `rel` (not following symlinks) unless it is a directory and `keepDir`. */
  private async clear(rel: string, keepDir: boolean): Promise<'absent' | 'dir-kept' | 'removed'> {
    const abs = this.abs(rel);
    let st;
    try {
      st = await fs.lstat(abs);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent';
      throw err;
    }
    if (st.isDirectory() && keepDir) return 'dir-kept';
    if (st.isDirectory()) await fs.rm(abs, { recursive: true, force: true });
    else await fs.unlink(abs);
    this.forget(rel);
    return 'removed';
  }

  private parentOf(rel: string): string {
    const slash = rel.lastIndexOf('/');
    return slash === -1 ? '' : rel.slice(0, slash);
  }

  async entry(header: EntryHeader, body: EntryBody): Promise<void> {
    const rel = cleanEntryName(header.name);
    if (rel === null) throw breakout(`${JSON.stringify(header.name)} is outside of the layer root`);
    const base = rel.slice(rel.lastIndexOf('/') + 1);
    const type = header.type ?? 'file';

    if (rel !== '' && base.startsWith(WHITEOUT_PREFIX)) {
      await drain(body);
      await this.whiteout(rel, base, header.name);
      return;
    }
    if (rel === '') {
      await drain(body);
      if (type === 'directory') this.dirMeta.set('', metaOf(header));
      else this.log?.debug('layer: ignoring a non-directory entry for the root', { name: header.name });
      return;
    }

    const parent = this.parentOf(rel);
    switch (type) {
      case 'directory': {
        await drain(body);
        await this.ensureDir(parent, header.name);
        const state = await this.clear(rel, true);
        if (state !== 'dir-kept') await fs.mkdir(this.abs(rel), { mode: 0o700 });
        this.realDirs.add(rel);
        this.dirMeta.set(rel, metaOf(header));
        await this.chown(this.abs(rel), header);
        await this.applyXattrs(rel, header);
        return;
      }
      case 'file':
      case 'contiguous-file': {
        await this.ensureDir(parent, header.name);
        await this.clear(rel, false);
        await this.writeFile(rel, header, body);
        await this.applyXattrs(rel, header);
        return;
      }
      case 'symlink': {
        await drain(body);
        await this.ensureDir(parent, header.name);
        await this.clear(rel, false);
        const abs = this.abs(rel);
        // The link text is stored verbatim and never followed here; inside the container it
        // resolves against the container's root.
        await fs.symlink(header.linkname ?? '', abs);
        await this.chown(abs, header);
        if (header.mtime) await fs.lutimes(abs, header.mtime, header.mtime);
        return;
      }
      case 'link': {
        await drain(body);
        const targetRel = cleanEntryName(header.linkname ?? '');
        if (targetRel === null || targetRel === '') {
          throw breakout(
            `invalid hardlink ${JSON.stringify(header.name)} -> ${JSON.stringify(header.linkname)}`,
          );
        }
        if (!(await this.isRealDirPath(this.parentOf(targetRel)))) {
          throw breakout(
            `invalid hardlink ${JSON.stringify(header.name)} -> ${JSON.stringify(header.linkname)}: target is not inside the layer`,
          );
        }
        let targetStat;
        try {
          targetStat = await fs.lstat(this.abs(targetRel));
        } catch {
          throw breakout(
            `invalid hardlink ${JSON.stringify(header.name)} -> ${JSON.stringify(header.linkname)}: target does not exist in the layer`,
          );
        }
        if (targetStat.isDirectory()) {
          throw breakout(`invalid hardlink ${JSON.stringify(header.name)}: target is a directory`);
        }
        if (targetRel === rel) return;
        await this.ensureDir(parent, header.name);
        await this.clear(rel, false);
        if (!(await this.isRealDirPath(this.parentOf(targetRel)))) {
          // clearing `rel` removed a directory the target lived in
          throw breakout(`invalid hardlink ${JSON.stringify(header.name)}: its target was removed`);
        }
        // link(2) does not follow a symlink target: a hardlink to a symlink links the symlink.
        await fs.link(this.abs(targetRel), this.abs(rel));
        return;
      }
      case 'character-device':
      case 'block-device': {
        await drain(body);
        if (type === 'character-device' && (header.devmajor ?? 0) === 0 && (header.devminor ?? 0) === 0) {
          await this.ensureDir(parent, header.name);
          await this.clear(rel, false);
          await this.mknodWhiteout(rel, header);
          return;
        }
        this.log?.debug('layer: skipping a device node', { name: header.name });
        return;
      }
      case 'fifo': {
        await drain(body);
        await this.ensureDir(parent, header.name);
        await this.clear(rel, false);
        const abs = this.abs(rel);
        await run('mknod', ['-m', ((header.mode ?? 0o644) & 0o777).toString(8), abs, 'p']);
        await this.chown(abs, header);
        if (header.mtime) await fs.lutimes(abs, header.mtime, header.mtime);
        return;
      }
      default:
        await drain(body);
        this.log?.debug('layer: skipping an entry of unsupported type', { name: header.name, type });
    }
  }

  private async whiteout(rel: string, base: string, entryName: string): Promise<void> {
    const parent = this.parentOf(rel);
    if (base === WHITEOUT_OPAQUE) {
      await this.ensureDir(parent, entryName);
      // setfattr -h never dereferences; the directory path was just walked with lstat.
      await run('setfattr', ['-h', '-n', 'trusted.overlay.opaque', '-v', 'y', this.abs(parent)]);
      return;
    }
    if (base.startsWith(WHITEOUT_META_PREFIX)) {
      this.log?.debug('layer: ignoring whiteout metadata', { name: entryName });
      return;
    }
    const name = base.slice(WHITEOUT_PREFIX.length);
    if (name === '' || name === '.' || name === '..') {
      throw breakout(`invalid whiteout ${JSON.stringify(entryName)}`);
    }
    const target = parent === '' ? name : `${parent}/${name}`;
    await this.ensureDir(parent, entryName);
    await this.clear(target, false);
    await this.mknodWhiteout(target, { name: entryName, uid: 0, gid: 0 });
  }

  private async mknodWhiteout(rel: string, header: EntryHeader): Promise<void> {
    const abs = this.abs(rel);
    // mknod(1) follows symlinks only in parent components, which ensureDir verified are real dirs,
    // and fails if the final name exists (we just cleared it).
    await run('mknod', ['-m', '000', abs, 'c', '0', '0']);
    await this.chown(abs, header);
  }

  private async writeFile(rel: string, header: EntryHeader, body: EntryBody): Promise<void> {
    const abs = this.abs(rel);
    const handle = await fs.open(
      abs,
      fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
      0o600,
    );
    try {
      for await (const chunk of body) {
        await handle.write(chunk);
      }
      if (this.isRoot) await handle.chown(header.uid ?? 0, header.gid ?? 0);
      // After chown, which clears set-id bits.
      await handle.chmod((header.mode ?? 0o644) & 0o7777);
      if (header.mtime) await handle.utimes(header.mtime, header.mtime);
    } finally {
      await handle.close();
    }
  }

  /** lchown: never follows, also for paths just verified. Skipped when not root (unit tests). */
  private async chown(abs: string, header: EntryHeader): Promise<void> {
    if (!this.isRoot) return;
    await fs.lchown(abs, header.uid ?? 0, header.gid ?? 0);
  }

  private async applyXattrs(rel: string, header: EntryHeader): Promise<void> {
    const pax = header.pax;
    if (typeof pax !== 'object' || pax === null) return;
    for (const [key, value] of Object.entries(pax as Record<string, unknown>)) {
      if (!key.startsWith('SCHILY.xattr.') || typeof value !== 'string') continue;
      const name = key.slice('SCHILY.xattr.'.length);
      if (!ALLOWED_XATTR(name)) {
        this.log?.debug('layer: skipping xattr', { name: header.name, xattr: name });
        continue;
      }
      try {
        const encoded = `0s${Buffer.from(value, 'latin1').toString('base64')}`;
        await run('setfattr', ['-h', '-n', name, '-v', encoded, this.abs(rel)]);
      } catch (err) {
        this.log?.warn('layer: could not set xattr', {
          name: header.name,
          xattr: name,
          error: (err as Error).message,
        });
      }
    }
  }

  /** Applies deferred directory metadata, deepest first, each after re-walking its path. */
  async finish(): Promise<void> {
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, meta] of dirs) {
      if (!(await this.isRealDirPath(rel))) continue;
      const abs = this.abs(rel);
      if (this.isRoot) await fs.lchown(abs, meta.uid, meta.gid);
      await fs.chmod(abs, meta.mode & 0o7777);
      if (meta.mtime) await fs.utimes(abs, meta.mtime, meta.mtime);
    }
  }
}

/**
 * Waits until the parser wants more input, or fails with the extraction's error: the parser may
 * already have been destroyed (its 'error' gone by), so `failed` — which settles on the first
 * error — is raced rather than a fresh 'error' listener.
 */
async function waitForDrain(extract: tar.Extract, failed: Promise<void>): Promise<void> {
  if (extract.destroyed) {
    await failed;
    throw new SystemError('layer extraction stopped');
  }
  let onDrain: (() => void) | undefined;
  try {
    await Promise.race([
      new Promise<void>((resolve) => {
        onDrain = resolve;
        extract.once('drain', onDrain);
      }),
      failed,
    ]);
  } finally {
    if (onDrain) extract.off('drain', onDrain);
  }
}

function metaOf(header: EntryHeader): DirMeta {
  return {
    mode: header.mode ?? 0o755,
    uid: header.uid ?? 0,
    gid: header.gid ?? 0,
    ...(header.mtime ? { mtime: header.mtime } : {}),
  };
}

async function drain(body: EntryBody): Promise<void> {
  for await (const _ of body) {
    // discard
  }
}

async function run(command: string, args: string[]): Promise<void> {
  try {
    await execFileAsync(command, args, { timeout: 30_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new SystemError(
        `${command} not found: install it (Debian: ${command === 'setfattr' ? 'attr' : 'coreutils'})`,
        {
          cause: err,
        },
      );
    }
    throw new SystemError(`${command} ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

/**
 * Extracts a (gzip- or zstd-compressed, or plain) layer tar from `input` into `dest`, which must be an
 * existing, empty directory private to this call. Returns the diffID of the uncompressed stream.
 * Throws LayerBreakoutError (a DataLossError) on a hostile entry, leaving `dest` for the caller
 * to remove.
 */
export async function extractLayer(
  input: AsyncIterable<Buffer>,
  dest: string,
  options: ExtractOptions = {},
): Promise<ExtractResult> {
  const iterator = input[Symbol.asyncIterator]();
  // Peek at the first bytes for the compression magic.
  const headChunks: Buffer[] = [];
  let headLength = 0;
  let ended = false;
  while (headLength < 6) {
    const next = await iterator.next();
    if (next.done) {
      ended = true;
      break;
    }
    headChunks.push(next.value);
    headLength += next.value.length;
  }
  const head = Buffer.concat(headChunks);
  const compression = detectCompression(head);
  const decompress = decompressors(compression);

  let consumed = 0;
  async function* source(): AsyncGenerator<Buffer> {
    for (const chunk of headChunks) {
      consumed += chunk.length;
      options.onInputBytes?.(consumed);
      yield chunk;
    }
    if (ended) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      options.signal?.throwIfAborted();
      consumed += next.value.length;
      options.onInputBytes?.(consumed);
      yield next.value;
    }
  }

  // The uncompressed bytes, hashed on the way into the tar parser.
  const plain = new PassThrough();
  const feedDone = new Promise<void>((resolve, reject) => {
    pipeline(
      [source() as unknown as Readable, ...decompress, plain] as unknown as [Readable, PassThrough],
      (err) => (err ? reject(err) : resolve()),
    );
  });
  feedDone.catch(() => undefined);

  const extractor = new Extractor(dest, options.log);
  const hash = createHash('sha256');
  let tarSize = 0;
  const extract = tar.extract();
  const entriesDone = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      // When extraction is torn down mid-entry, the entry stream is destroyed with the reason;
      // the reason is reported through `entriesDone`, so the stream's own 'error' is expected.
      stream.on('error', () => undefined);
      extractor.entry(header, stream as unknown as EntryBody).then(
        () => next(),
        (err: unknown) => {
          stream.resume();
          next(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
    extract.once('error', reject);
    extract.once('finish', resolve);
    extract.once('close', () => reject(new SystemError('layer extraction stopped')));
  });
  entriesDone.catch(() => undefined);

  try {
    for await (const chunk of plain as AsyncIterable<Buffer>) {
      hash.update(chunk);
      tarSize += chunk.length;
      if (!extract.write(chunk)) await waitForDrain(extract, entriesDone);
    }
    extract.end(undefined);
    await Promise.all([feedDone, entriesDone]);
  } catch (err) {
    extract.destroy(err instanceof Error ? err : new Error(String(err)));
    plain.destroy();
    // Prefer the entry error (the reason) over the stream teardown it caused.
    const reason = await entriesDone.then(
      () => err,
      (entryErr: unknown) => entryErr,
    );
    throw normalizeStreamError(reason);
  }
  await extractor.finish();
  return { diffID: `sha256:${hash.digest('hex')}`, tarSize };
}

function normalizeStreamError(err: unknown): unknown {
  if (err instanceof DataLossError || err instanceof NotImplementedError || err instanceof SystemError)
    return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.name === 'AbortError') return err;
  if (e && typeof e.code === 'string' && e.code.startsWith('Z_')) {
    return new DataLossError(`failed to register layer: ${e.message}`, { cause: err });
  }
  if (e instanceof Error && /tar|header|Unexpected end/i.test(e.message)) {
    return new DataLossError(`failed to register layer: ${e.message}`, { cause: err });
  }
  return err;
}

/** Extracts a layer blob file (see extractLayer). */
export async function extractLayerFile(
  blobPath: string,
  dest: string,
  options: ExtractOptions = {},
): Promise<ExtractResult> {
  const stream = createReadStream(blobPath, { highWaterMark: 256 * 1024 });
  try {
    return await extractLayer(stream, dest, options);
  } finally {
    stream.destroy();
  }
}

/**
 * dockerd's layer size: the sum of st_size of everything but directories, each inode counted once
 * (hardlinks), without following symlinks.
 */
export async function directorySize(root: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    for (const e of entries) {
      const abs = path.join(dir, e.name);
      const st = await fs.lstat(abs, { bigint: true });
      if (st.isDirectory()) {
        await walk(abs);
        continue;
      }
      if (st.size === 0n) continue;
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) continue;
      seen.add(key);
      total += Number(st.size);
    }
  };
  await walk(root);
  return total;
}
