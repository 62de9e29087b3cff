/**
 * `docker cp` and `docker export` on a container's root filesystem: stat a path, tar a path out,
 * extract a tar into a directory — all confined to the rootfs. Used on the host for a container
 * that is not running (its overlay mounted privately by the daemon) and in the guest agent for a
 * running one (the rootfs as the guest sees it), so the same rules hold on both sides.
 *
 * Threat: the rootfs is container-controlled. Any component of a path may be a symlink planted to
 * point out of it (`/tmp/x -> /`, `/data -> ../../../etc`), and a tar sent to PUT …/archive may try
 * to write outside its extraction point (`../../x`, an entry written through a symlink planted by
 * an earlier entry or already in the container, a hardlink to a file outside).
 *
 * Defence: a user path is resolved as if the rootfs were `/` (absolute link targets restart at the
 * root, `..` stops there, at most 255 links), the way dockerd resolves it inside the container's
 * root (FollowSymlinkInScope). The tree is read with lstat and never follows a symlink: links go
 * into the tar as links. Extraction is as strict as layer extraction (images/unpack.ts): entry names
 * that climb above the extraction point are rejected (dockerd silently confines them), parent
 * directories are walked with lstat and a symlink or non-directory component aborts, files are
 * opened O_CREAT|O_EXCL|O_NOFOLLOW after whatever was at that name was unlinked, metadata is set
 * through the descriptor or with l* calls, hardlinks must point at a regular entry inside the
 * extraction point reached through real directories, and device nodes are skipped.
 *
 * This file imports only node and tar-stream, so the guest agent bundles it unchanged.
 */
import { constants as fsConstants, promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';

const MAX_SYMLINKS = 255;

type TarHeader = Partial<tar.Header> & { name: string };

/** Errors with a kind each caller maps to its own taxonomy (errdefs on the host, gRPC in the guest). */
export type RootfsArchiveErrorKind = 'NotFound' | 'InvalidArgument' | 'Conflict' | 'System';

export class RootfsArchiveError extends Error {
  constructor(
    readonly kind: RootfsArchiveErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RootfsArchiveError';
  }
}

/** What HEAD …/archive reports (dockerd's ContainerPathStat), mode as Go's os.FileMode bits. */
export interface PathStat {
  name: string;
  size: number;
  mode: number;
  /** Nanoseconds since the epoch. */
  mtimeNs: bigint;
  /** For a symlink: the absolute path in the container it finally resolves to; else "". */
  linkTarget: string;
}

// Go's os.FileMode type bits.
const GO_MODE = {
  dir: 2 ** 31,
  symlink: 2 ** 27,
  device: 2 ** 26,
  namedPipe: 2 ** 25,
  socket: 2 ** 24,
  setuid: 2 ** 23,
  setgid: 2 ** 22,
  charDevice: 2 ** 21,
  sticky: 2 ** 20,
} as const;

/** Go's os.FileMode for a stat. Pure. */
export function goFileMode(st: Pick<Stats, 'mode'>): number {
  const m = st.mode;
  let mode = m & 0o777;
  const type = m & fsConstants.S_IFMT;
  if (type === fsConstants.S_IFDIR) mode += GO_MODE.dir;
  else if (type === fsConstants.S_IFLNK) mode += GO_MODE.symlink;
  else if (type === fsConstants.S_IFIFO) mode += GO_MODE.namedPipe;
  else if (type === fsConstants.S_IFSOCK) mode += GO_MODE.socket;
  else if (type === fsConstants.S_IFBLK) mode += GO_MODE.device;
  else if (type === fsConstants.S_IFCHR) mode += GO_MODE.device + GO_MODE.charDevice;
  if (m & 0o4000) mode += GO_MODE.setuid;
  if (m & 0o2000) mode += GO_MODE.setgid;
  if (m & 0o1000) mode += GO_MODE.sticky;
  return mode;
}

/** `p` made absolute and cleaned, keeping a trailing "/" or "/." (they change cp's meaning). Pure. */
export function cleanContainerPath(p: string): string {
  const joined = path.posix.join('/', p);
  const cleaned = joined.length > 1 && joined.endsWith('/') ? joined.slice(0, -1) : joined;
  if ((p.endsWith('/.') || p === '.') && cleaned !== '/') return `${cleaned}/.`;
  if (p.endsWith('/') && cleaned !== '/') return `${cleaned}/`;
  return cleaned;
}

/**
 * Resolves `p` (a container path) to the container path it names, every symlink in it followed
 * inside `root` (absolute targets restart at the root, `..` stops at it). Components that do not
 * exist are appended lexically. Returns a clean absolute container path ("/" for the root).
 */
export async function resolveContainerPath(root: string, p: string): Promise<string> {
  const pending = p.split('/').reverse();
  const resolved: string[] = [];
  let links = 0;
  let missing = false;
  while (pending.length > 0) {
    const part = pending.pop() as string;
    if (part === '' || part === '.') continue;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    if (missing) {
      resolved.push(part);
      continue;
    }
    let st: Stats;
    try {
      st = await fs.lstat(path.join(root, ...resolved, part));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      missing = true;
      resolved.push(part);
      continue;
    }
    if (!st.isSymbolicLink()) {
      resolved.push(part);
      continue;
    }
    if (++links > MAX_SYMLINKS) {
      throw new RootfsArchiveError('InvalidArgument', `too many levels of symbolic links: ${p}`);
    }
    const target = await fs.readlink(path.join(root, ...resolved, part));
    if (target.startsWith('/')) resolved.length = 0;
    pending.push(...target.split('/').reverse());
  }
  return '/' + resolved.join('/');
}

function hostPath(root: string, containerPath: string): string {
  return path.join(root, containerPath);
}

/**
 * A user path split as dockerd's ResolvePath does: the directory part resolved inside `root`, the
 * last component kept as given (so a symlink at the end is the link itself), and a trailing "/" or
 * "/." kept. `container` is the resulting container path, `host` the same under `root`.
 */
async function resolveKeepingBase(
  root: string,
  p: string,
): Promise<{ container: string; host: string; trailing: '' | '/' | '/.' }> {
  const clean = cleanContainerPath(p);
  const trailing = clean.endsWith('/.') ? '/.' : clean.endsWith('/') && clean !== '/' ? '/' : '';
  const bare = trailing === '' ? clean : clean.slice(0, -trailing.length);
  if (bare === '/') return { container: '/', host: root, trailing };
  // With a trailing slash the last component is followed too (dockerd: it is part of the dir).
  if (trailing !== '') {
    const full = await resolveContainerPath(root, bare);
    return { container: full, host: hostPath(root, full), trailing };
  }
  const dir = await resolveContainerPath(root, path.posix.dirname(bare));
  const container = path.posix.join(dir, path.posix.basename(bare));
  return { container, host: hostPath(root, container), trailing };
}

function notFound(p: string, containerName: string): RootfsArchiveError {
  return new RootfsArchiveError('NotFound', `Could not find the file ${p} in container ${containerName}`);
}

async function lstatOrNotFound(host: string, p: string, containerName: string): Promise<Stats> {
  try {
    return await fs.lstat(host);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw notFound(p, containerName);
    if (code === 'ENOTDIR') throw new RootfsArchiveError('System', `lstat ${p}: not a directory`);
    throw err;
  }
}

/** dockerd's ContainerStatPath. `containerName` only goes into messages. */
export async function statPath(root: string, p: string, containerName: string): Promise<PathStat> {
  const { container, host, trailing } = await resolveKeepingBase(root, p);
  const st = await lstatOrNotFound(host, p, containerName);
  if (trailing !== '' && !st.isDirectory()) {
    throw new RootfsArchiveError('System', `lstat ${p}: not a directory`);
  }
  let linkTarget = '';
  if (st.isSymbolicLink()) linkTarget = await resolveContainerPath(root, container);
  return {
    name: container === '/' ? '/' : path.posix.basename(container),
    size: st.size,
    mode: goFileMode(st),
    mtimeNs: (await fs.lstat(host, { bigint: true })).mtimeNs,
    linkTarget,
  };
}

// ---- tar out ----------------------------------------------------------------------------------

interface OutEntry {
  host: string;
  name: string;
}

/**
 * Writes the tree at `host` into `pack` with entry names under `name` ("" for none: the export
 * layout). Never follows a symlink; hardlinked files after the first become link entries; sockets
 * are skipped.
 */
async function packTree(pack: tar.Pack, start: OutEntry, signal?: AbortSignal): Promise<void> {
  const inodes = new Map<string, string>();
  const stack: OutEntry[] = [start];
  while (stack.length > 0) {
    signal?.throwIfAborted();
    const { host, name } = stack.pop() as OutEntry;
    let st: Stats;
    try {
      st = await fs.lstat(host);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // vanished meanwhile
      throw err;
    }
    const base = {
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: st.mtime,
    };
    if (st.isDirectory()) {
      if (name !== '') await entry(pack, { ...base, name: `${name}/`, type: 'directory' });
      const children = (await fs.readdir(host)).sort().reverse();
      for (const child of children) {
        stack.push({ host: path.join(host, child), name: name === '' ? child : `${name}/${child}` });
      }
      continue;
    }
    if (name === '') continue;
    if (st.isSymbolicLink()) {
      await entry(pack, { ...base, name, type: 'symlink', linkname: await fs.readlink(host) });
    } else if (st.isFIFO()) {
      await entry(pack, { ...base, name, type: 'fifo' });
    } else if (st.isCharacterDevice() || st.isBlockDevice()) {
      await entry(pack, {
        ...base,
        name,
        type: st.isCharacterDevice() ? 'character-device' : 'block-device',
        devmajor: Math.floor(st.rdev / 256) & 0xfff,
        devminor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00),
      });
    } else if (st.isFile()) {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? inodes.get(key) : undefined;
      if (first !== undefined) {
        await entry(pack, { ...base, name, type: 'link', linkname: first });
        continue;
      }
      if (st.nlink > 1) inodes.set(key, name);
      await fileEntry(pack, { ...base, name, type: 'file', size: st.size }, host);
    }
  }
}

function entry(pack: tar.Pack, header: TarHeader): Promise<void> {
  return new Promise((resolve, reject) => {
    pack.entry(header, (err) => (err ? reject(err) : resolve()));
  });
}

async function fileEntry(pack: tar.Pack, header: TarHeader & { size: number }, host: string): Promise<void> {
  // O_NOFOLLOW: the name was just lstat'ed as a regular file; if it was swapped for a link
  // meanwhile, fail rather than read through it.
  const handle = await fs.open(host, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    let remaining = header.size;
    const sink = pack.entry(header);
    const done = new Promise<void>((resolve, reject) => {
      sink.once('finish', resolve);
      sink.once('error', reject);
    });
    const buffer = Buffer.alloc(64 * 1024);
    while (remaining > 0) {
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, remaining), null);
      if (bytesRead === 0) break;
      remaining -= bytesRead;
      if (!sink.write(Buffer.from(buffer.subarray(0, bytesRead)))) {
        await new Promise<void>((resolve) => sink.once('drain', () => resolve()));
      }
    }
    // The file shrank while we read it: pad, as the header promised `size` bytes.
    if (remaining > 0) sink.write(Buffer.alloc(remaining));
    sink.end(undefined);
    await done;
  } finally {
    await handle.close();
  }
}

export interface ArchiveOut {
  stat: PathStat;
  /** The tar stream; read it to the end or destroy it. */
  stream: Readable;
}

function packStream(run: (pack: tar.Pack) => Promise<void>): Readable {
  const pack = tar.pack();
  run(pack).then(
    () => pack.finalize(),
    (err: unknown) => pack.destroy(err instanceof Error ? err : new Error(String(err))),
  );
  return pack as unknown as Readable;
}

/**
 * dockerd's ContainerArchivePath: the tar's top entry is the path's base name (a directory's
 * contents under it); with a trailing "/." the entries are "./" and "./<child>" (cp's "copy the
 * contents"). A symlink at the end is archived as the link. Stat errors come before any byte.
 */
export async function archiveOut(root: string, p: string, containerName: string): Promise<ArchiveOut> {
  const stat = await statPath(root, p, containerName);
  const { container, host, trailing } = await resolveKeepingBase(root, p);
  const name = trailing === '/.' ? '.' : container === '/' ? '.' : path.posix.basename(container);
  return { stat, stream: packStream((pack) => packTree(pack, { host, name })) };
}

/** `docker export`: the whole rootfs, entries named relative to it ("bin/", "bin/sh" …). */
export function exportRootfs(root: string): Readable {
  return packStream((pack) => packTree(pack, { host: root, name: '' }));
}

// ---- tar in -----------------------------------------------------------------------------------

export interface ExtractOptions {
  /** dockerd's noOverwriteDirNonDir: refuse to replace a directory by a non-directory and back. */
  noOverwriteDirNonDir: boolean;
  /** Owner for every entry (copyUIDGID: the container's user); else the tar's uid/gid. */
  chownTo?: { uid: number; gid: number };
}

/**
 * Cleans a tar entry name into a path relative to the extraction point ("" is the point itself), or
 * null when it climbs above it. Leading slashes are dropped (absolute names are confined). Pure;
 * layer unpack (images/) and docker cp share it.
 */
export function cleanEntryName(name: string): string | null {
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) return null;
      out.pop();
      continue;
    }
    out.push(part);
  }
  return out.join('/');
}

interface DirMeta {
  mode: number;
  mtime?: Date;
}

class Extractor {
  private readonly realDirs = new Set<string>(['']);
  private readonly dirMeta = new Map<string, DirMeta>();
  private readonly isRoot = process.getuid?.() === 0;

  constructor(
    private readonly dest: string,
    private readonly options: ExtractOptions,
  ) {}

  private abs(rel: string): string {
    return rel === '' ? this.dest : path.join(this.dest, rel);
  }

  private reject(name: string, why: string): RootfsArchiveError {
    return new RootfsArchiveError('InvalidArgument', `invalid tar entry ${JSON.stringify(name)}: ${why}`);
  }

  /** Every component of `rel` a real directory (missing ones created 0755), never via a symlink. */
  private async ensureDir(rel: string, name: string): Promise<void> {
    if (this.realDirs.has(rel)) return;
    let current = '';
    for (const part of rel.split('/')) {
      current = current === '' ? part : `${current}/${part}`;
      if (this.realDirs.has(current)) continue;
      let st: Stats;
      try {
        st = await fs.lstat(this.abs(current));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        await fs.mkdir(this.abs(current), { mode: 0o755 });
        await this.chown(this.abs(current), 0, 0);
        this.realDirs.add(current);
        continue;
      }
      if (st.isSymbolicLink())
        throw this.reject(name, `path goes through the symlink ${JSON.stringify(current)}`);
      if (!st.isDirectory()) throw this.reject(name, `${JSON.stringify(current)} is not a directory`);
      this.realDirs.add(current);
    }
  }

  private async isRealDirPath(rel: string): Promise<boolean> {
    let current = '';
    for (const part of rel === '' ? [] : rel.split('/')) {
      current = current === '' ? part : `${current}/${part}`;
      const st = await fs.lstat(this.abs(current)).catch(() => undefined);
      if (!st?.isDirectory()) return false;
    }
    return true;
  }

  private forget(rel: string): void {
    const prefix = rel + '/';
    for (const d of this.realDirs) if (d === rel || d.startsWith(prefix)) this.realDirs.delete(d);
    for (const d of this.dirMeta.keys()) if (d === rel || d.startsWith(prefix)) this.dirMeta.delete(d);
  }

  /** Makes room at `rel` for an entry; keeps an existing directory when the entry is one. */
  private async clear(rel: string, name: string, isDir: boolean): Promise<'dir-kept' | 'free'> {
    const abs = this.abs(rel);
    const st = await fs.lstat(abs).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (st === undefined) return 'free';
    if (st.isDirectory() && isDir) return 'dir-kept';
    if (this.options.noOverwriteDirNonDir) {
      if (st.isDirectory() && !isDir) {
        throw new RootfsArchiveError(
          'InvalidArgument',
          `cannot overwrite directory ${JSON.stringify('/' + rel)} with non-directory ${JSON.stringify(name)}`,
        );
      }
      if (!st.isDirectory() && isDir) {
        throw new RootfsArchiveError(
          'InvalidArgument',
          `cannot overwrite non-directory ${JSON.stringify('/' + rel)} with directory ${JSON.stringify(name)}`,
        );
      }
    }
    if (st.isDirectory()) await fs.rm(abs, { recursive: true, force: true });
    else await fs.unlink(abs);
    this.forget(rel);
    return 'free';
  }

  private owner(header: TarHeader): { uid: number; gid: number } {
    return this.options.chownTo ?? { uid: header.uid ?? 0, gid: header.gid ?? 0 };
  }

  private async chown(abs: string, uid: number, gid: number): Promise<void> {
    if (this.isRoot) await fs.lchown(abs, uid, gid);
  }

  async entry(header: TarHeader, body: AsyncIterable<Uint8Array>): Promise<void> {
    const rel = cleanEntryName(header.name);
    if (rel === null) throw this.reject(header.name, 'it is outside of the extraction point');
    const type = header.type ?? 'file';
    const parent = rel.includes('/') ? rel.slice(0, rel.lastIndexOf('/')) : '';
    const { uid, gid } = this.owner(header);
    if (rel === '') {
      await drain(body);
      // "./" of a cp with a trailing "/.": the extraction point keeps its own metadata, as
      // dockerd keeps an existing directory's.
      return;
    }
    switch (type) {
      case 'directory': {
        await drain(body);
        await this.ensureDir(parent, header.name);
        if ((await this.clear(rel, header.name, true)) !== 'dir-kept')
          await fs.mkdir(this.abs(rel), { mode: 0o700 });
        this.realDirs.add(rel);
        this.dirMeta.set(rel, {
          mode: header.mode ?? 0o755,
          ...(header.mtime ? { mtime: header.mtime } : {}),
        });
        await this.chown(this.abs(rel), uid, gid);
        return;
      }
      case 'file':
      case 'contiguous-file': {
        await this.ensureDir(parent, header.name);
        await this.clear(rel, header.name, false);
        const handle = await fs.open(
          this.abs(rel),
          fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
          0o600,
        );
        try {
          for await (const chunk of body) await handle.write(chunk);
          if (this.isRoot) await handle.chown(uid, gid);
          await handle.chmod((header.mode ?? 0o644) & 0o7777); // after chown, which clears set-id bits
          if (header.mtime) await handle.utimes(header.mtime, header.mtime);
        } finally {
          await handle.close();
        }
        return;
      }
      case 'symlink': {
        await drain(body);
        await this.ensureDir(parent, header.name);
        await this.clear(rel, header.name, false);
        // Stored verbatim, never followed here; in the container it resolves against its root.
        await fs.symlink(header.linkname ?? '', this.abs(rel));
        await this.chown(this.abs(rel), uid, gid);
        if (header.mtime) await fs.lutimes(this.abs(rel), header.mtime, header.mtime);
        return;
      }
      case 'link': {
        await drain(body);
        const target = cleanEntryName(header.linkname ?? '');
        if (target === null || target === '')
          throw this.reject(header.name, 'hardlink target is outside of the extraction point');
        const targetParent = target.includes('/') ? target.slice(0, target.lastIndexOf('/')) : '';
        if (!(await this.isRealDirPath(targetParent)))
          throw this.reject(header.name, 'hardlink target is not inside the extraction point');
        const st = await fs.lstat(this.abs(target)).catch(() => undefined);
        if (st === undefined) throw this.reject(header.name, 'hardlink target does not exist');
        if (st.isDirectory()) throw this.reject(header.name, 'hardlink target is a directory');
        if (target === rel) return;
        await this.ensureDir(parent, header.name);
        await this.clear(rel, header.name, false);
        if (!(await this.isRealDirPath(targetParent)))
          throw this.reject(header.name, 'hardlink target was removed');
        await fs.link(this.abs(target), this.abs(rel));
        return;
      }
      default:
        // Devices, fifos and the like: not created (a device node in a container is a way out).
        await drain(body);
    }
  }

  async finish(): Promise<void> {
    const dirs = [...this.dirMeta.entries()].sort((a, b) => b[0].split('/').length - a[0].split('/').length);
    for (const [rel, meta] of dirs) {
      if (!(await this.isRealDirPath(rel))) continue;
      await fs.chmod(this.abs(rel), meta.mode & 0o7777);
      if (meta.mtime) await fs.utimes(this.abs(rel), meta.mtime, meta.mtime);
    }
  }
}

async function drain(body: AsyncIterable<Uint8Array>): Promise<void> {
  for await (const _ of body) {
    // discard
  }
}

/**
 * dockerd's ContainerExtractToDir: `p` (every symlink in it followed inside `root`) must be an
 * existing directory; the tar from `input` is extracted into it (see the file comment for the
 * rules). An entry that breaks them fails the whole call; entries before it stay written, as with
 * dockerd.
 */
export async function extractInto(
  root: string,
  p: string,
  containerName: string,
  input: AsyncIterable<Uint8Array>,
  options: ExtractOptions,
): Promise<void> {
  const resolved = await resolveContainerPath(root, cleanContainerPath(p));
  const host = hostPath(root, resolved);
  const st = await lstatOrNotFound(host, p, containerName);
  if (!st.isDirectory()) throw new RootfsArchiveError('System', 'extraction point is not a directory');
  await extractTar(host, input, options);
}

/** Extracts a plain tar into the existing directory `dest` (see Extractor). */
export async function extractTar(
  dest: string,
  input: AsyncIterable<Uint8Array>,
  options: ExtractOptions,
): Promise<void> {
  const extractor = new Extractor(dest, options);
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      stream.on('error', () => undefined);
      extractor.entry(header, stream as unknown as AsyncIterable<Uint8Array>).then(
        () => next(),
        (err: unknown) => {
          stream.resume();
          next(err instanceof Error ? err : new Error(String(err)));
        },
      );
    });
    extract.once('error', reject);
    extract.once('finish', resolve);
  });
  done.catch(() => undefined);
  try {
    for await (const chunk of input) {
      if (!extract.write(Buffer.from(chunk))) {
        await Promise.race([new Promise<void>((resolve) => extract.once('drain', () => resolve())), done]);
      }
    }
    extract.end(undefined);
    await done;
  } catch (err) {
    extract.destroy();
    const reason = await done.then(
      () => err,
      (entryErr: unknown) => entryErr,
    );
    if (reason instanceof RootfsArchiveError) throw reason;
    const message = reason instanceof Error ? reason.message : String(reason);
    if (/tar|header|Unexpected end/i.test(message)) {
      throw new RootfsArchiveError('InvalidArgument', `invalid tar stream: ${message}`, { cause: reason });
    }
    throw reason;
  }
  await extractor.finish();
}

/**
 * The uid and gid of Docker's User string ("", "1000", "1000:50", "app", "app:staff") from the
 * rootfs's /etc/passwd and /etc/group, read inside `root` — copyUIDGID's owner. Unknown names
 * fail as dockerd's lookup does.
 */
export async function userIdsInRoot(root: string, user: string): Promise<{ uid: number; gid: number }> {
  const read = async (file: string): Promise<string[][]> => {
    const host = hostPath(root, await resolveContainerPath(root, file));
    const text = await fs.readFile(host, 'utf8').catch(() => '');
    return text.split('\n').map((line) => line.split(':'));
  };
  const [userPart = '', groupPart] = user.split(':');
  const numeric = (s: string): number | undefined => (/^\d+$/.test(s) ? Number(s) : undefined);
  let uid = 0;
  let gid = 0;
  if (userPart !== '') {
    const passwd = await read('/etc/passwd');
    const entry = passwd.find((f) => f[0] === userPart) ?? passwd.find((f) => f[2] === userPart);
    if (entry !== undefined) {
      uid = Number(entry[2]);
      gid = Number(entry[3]);
    } else if (numeric(userPart) !== undefined) {
      uid = numeric(userPart) as number;
    } else {
      throw new RootfsArchiveError(
        'System',
        `unable to find user ${userPart}: no matching entries in passwd file`,
      );
    }
  }
  if (groupPart !== undefined && groupPart !== '') {
    const group = await read('/etc/group');
    const entry = group.find((f) => f[0] === groupPart);
    if (entry !== undefined) gid = Number(entry[2]);
    else if (numeric(groupPart) !== undefined) gid = numeric(groupPart) as number;
    else
      throw new RootfsArchiveError(
        'System',
        `unable to find group ${groupPart}: no matching entries in group file`,
      );
  }
  return { uid, gid };
}
