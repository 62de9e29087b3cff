/**
 * `docker commit`: a container's writable layer becomes a new image layer on top of its image, as
 * dockerd 20.10's CommitContainer makes it.
 *
 * The layer tar is read from the overlay upper dir with lstat only (never following a link the
 * container made): overlay whiteouts (character device 0/0) become `.wh.<name>` entries, opaque
 * directories (xattr trusted.overlay.opaque=y) get a `.wh..wh..opq` entry, hardlinked files after
 * the first become link entries, sockets and device nodes are left out. The tar is stored in the
 * content store (its digest is the diffID) and unpacked by the same safe extractor as pulled
 * layers before the config and the image record are written and the tag set.
 *
 * The config has dockerd's layout for a commit: architecture, author, config (the container's
 * config with the --change instructions applied), container, container_config, created,
 * docker_version, history (the parent's, plus one entry), os, rootfs (the parent's diff_ids plus
 * the new one); the image record keeps the parent id.
 */
import { execFile } from 'node:child_process';
import { promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as tar from 'tar-stream';
import { InvalidParameterError, SystemError } from '../common/errdefs';
import { applyChanges } from './changes';
import { goContainerConfig, goMarshal, goObject, goString } from './go-json';
import type { ServiceContext } from './internals';
import { goArch, goNow } from './internals';
import { isValidTag, parseNormalizedNamed, referenceString, type Reference } from './reference';
import type { ImageRecord, ImageRuntimeConfig } from './types';
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from './unpack';

const execFileAsync = promisify(execFile);

/**
 * Top-level dirs the OCI runtime mounts over in every container (and creates when the image lacks
 * them). dockerd never sees them in a writable layer — its init layer and mounts hide them — so
 * `docker diff` and `docker commit` leave them out here too.
 */
export const RUNTIME_MOUNTPOINTS: ReadonlySet<string> = new Set(['dev', 'proc', 'sys']);

export interface CommitRequest {
  /** The container's image (the parent). */
  parentId: string;
  /** The writable layer's overlay upper dir. */
  upperDir: string;
  containerId: string;
  /** The container's config (Docker's container.Config JSON shape). */
  containerConfig: ImageRuntimeConfig;
  /** The history entry's created_by: the container's command line. */
  createdBy: string;
  repository?: string;
  tag?: string;
  comment?: string;
  author?: string;
  changes?: string[];
  /** The engine version for docker_version. */
  dockerVersion: string;
}

export interface CommitPlan {
  ref: Reference | undefined;
  config: ImageRuntimeConfig;
}

/**
 * The name a commit gives its image, as dockerd forms it: the repository, its tag replaced by
 * `tag` when one is given, else "latest"; undefined without a repository.
 */
export function commitReference(repository?: string, tag?: string): Reference | undefined {
  if (repository === undefined || repository === '') return undefined;
  let ref = parseNormalizedNamed(repository);
  if (ref.digest !== undefined) throw new InvalidParameterError('cannot commit to digest reference');
  if (tag !== undefined && tag !== '') {
    if (!isValidTag(tag)) throw new InvalidParameterError('invalid tag format');
    ref = { domain: ref.domain, path: ref.path, tag };
  }
  if (ref.tag === undefined) ref = { ...ref, tag: 'latest' };
  return ref;
}

/** Validates what dockerd checks before touching the container (its order and texts). */
export function planCommit(request: CommitRequest): CommitPlan {
  const ref = commitReference(request.repository, request.tag);
  const config = applyChanges(request.changes ?? [], structuredClone(request.containerConfig));
  return { ref, config };
}

/** Directories under `upperDir` marked opaque, relative ("" never: the root is not a layer dir). */
export async function opaqueDirs(upperDir: string): Promise<Set<string>> {
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync(
      'getfattr',
      ['-R', '-h', '--absolute-names', '-n', 'trusted.overlay.opaque', upperDir],
      { maxBuffer: 64 * 1024 * 1024, timeout: 60_000 },
    ));
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string };
    if (e.code === 'ENOENT')
      throw new SystemError('getfattr not found: install it (Debian: attr)', { cause: err });
    // Exit status 1: some files lack the attribute (reported on stderr); stdout has the rest.
    stdout = e.stdout ?? '';
  }
  const found = new Set<string>();
  let file: string | undefined;
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      file = line
        .slice('# file: '.length)
        .replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    } else if (file !== undefined && /^trusted\.overlay\.opaque="?y"?$/.test(line.trim())) {
      const rel = path.relative(upperDir, file);
      if (rel !== '' && !rel.startsWith('..')) found.add(rel.split(path.sep).join('/'));
    }
  }
  return found;
}

function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** One entry without a body (a file entry gets an empty one: tar-stream waits for a body otherwise). */
function addEntry(pack: tar.Pack, header: Partial<tar.Header> & { name: string }): Promise<void> {
  return new Promise((resolve, reject) =>
    pack.entry(header, Buffer.alloc(0), (err) => (err ? reject(err) : resolve())),
  );
}

/** The layer tar of an overlay upper dir (see the file comment); read with lstat only. */
export function upperDirLayer(upperDir: string, opaque: ReadonlySet<string>): AsyncIterable<Buffer> {
  const pack = tar.pack();
  const inodes = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    const names = (
      await fs.readdir(path.join(upperDir, rel)).catch((err: NodeJS.ErrnoException) => {
        // A container that never started has no upper dir yet: nothing changed, an empty layer.
        if (rel === '' && err.code === 'ENOENT') return [];
        throw err;
      })
    ).sort();
    if (rel !== '' && opaque.has(rel)) {
      await addEntry(pack, { name: `${rel}/${WHITEOUT_OPAQUE}`, size: 0, mode: 0o644, mtime: new Date(0) });
    }
    for (const name of names) {
      if (rel === '' && RUNTIME_MOUNTPOINTS.has(name)) continue;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const abs = path.join(upperDir, childRel);
      const st = await fs.lstat(abs);
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: st.mtime };
      if (isWhiteout(st)) {
        const whiteout = rel === '' ? `${WHITEOUT_PREFIX}${name}` : `${rel}/${WHITEOUT_PREFIX}${name}`;
        await addEntry(pack, { name: whiteout, size: 0, mode: 0o600, mtime: st.mtime });
      } else if (st.isDirectory()) {
        await addEntry(pack, { ...base, name: `${childRel}/`, type: 'directory' });
        await walk(childRel);
      } else if (st.isSymbolicLink()) {
        await addEntry(pack, { ...base, name: childRel, type: 'symlink', linkname: await fs.readlink(abs) });
      } else if (st.isFIFO()) {
        await addEntry(pack, { ...base, name: childRel, type: 'fifo' });
      } else if (st.isFile()) {
        const key = `${st.dev}:${st.ino}`;
        const first = st.nlink > 1 ? inodes.get(key) : undefined;
        if (first !== undefined) {
          await addEntry(pack, { ...base, name: childRel, type: 'link', linkname: first });
          continue;
        }
        if (st.nlink > 1) inodes.set(key, childRel);
        // O_NOFOLLOW through the path just lstat'ed; streamed, at the size lstat gave (the
        // container is stopped or paused: a file that changes size anyway fails the commit).
        const handle = await fs.open(abs, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        try {
          await packFile(pack, { ...base, name: childRel, type: 'file', size: st.size }, handle);
        } finally {
          await handle.close();
        }
      }
      // Sockets and device nodes are not layer content.
    }
  };
  // A failed walk must reach the consumer, never surface as an unhandled 'error' event (that would
  // end the daemon): it is kept here and rethrown by the iteration below.
  let failure: Error | undefined;
  pack.on('error', (err: Error) => (failure ??= err));
  walk('').then(
    () => pack.finalize(),
    (err: unknown) => {
      failure ??= err instanceof Error ? err : new Error(String(err));
      pack.destroy(failure);
    },
  );
  return (async function* () {
    try {
      for await (const chunk of pack as unknown as AsyncIterable<Buffer>) yield chunk;
    } catch (err) {
      throw failure ?? err;
    }
    if (failure) throw failure;
  })();
}

/** One regular file's entry, its data read from `handle` in chunks with the pack's backpressure. */
async function packFile(
  pack: tar.Pack,
  header: Partial<tar.Header> & { name: string; size: number },
  handle: fs.FileHandle,
): Promise<void> {
  if (header.size === 0) {
    await addEntry(pack, header);
    return;
  }
  await new Promise<void>((resolve, reject) => {
    const entry = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    void (async () => {
      const buffer = Buffer.alloc(Math.min(header.size, 1 << 20));
      let position = 0;
      while (position < header.size) {
        const { bytesRead } = await handle.read(
          buffer,
          0,
          Math.min(buffer.length, header.size - position),
          position,
        );
        if (bytesRead === 0) throw new Error(`${header.name}: file shrank while being committed`);
        position += bytesRead;
        // A copy: the entry may hold on to it while `buffer` is reused.
        if (!entry.write(Buffer.from(buffer.subarray(0, bytesRead)))) {
          await new Promise<void>((r) => entry.once('drain', () => r()));
        }
      }
      entry.end(() => undefined);
    })().catch((err: unknown) => {
      entry.destroy(err instanceof Error ? err : new Error(String(err)));
      reject(err);
    });
  });
}

/** Commits; the caller has entered the content gate. Returns the new image id. */
export async function commitImage(
  ctx: ServiceContext,
  plan: CommitPlan,
  request: CommitRequest,
): Promise<string> {
  const parent = await ctx.loadConfig(request.parentId);
  const parentMeta = ctx.images.getImage(request.parentId);
  const opaque = await opaqueDirs(request.upperDir);
  const { digest: diffID } = await ctx.content.ingestComputed(upperDirLayer(request.upperDir, opaque));
  const layer = await ctx.layers.unpack(diffID, ctx.content.blobPath(diffID), diffID);
  const created = goNow();
  const historyEntry: Array<[string, string]> = [['created', goString(created)]];
  if (request.author) historyEntry.push(['author', goString(request.author)]);
  historyEntry.push(['created_by', goString(request.createdBy)]);
  if (request.comment) historyEntry.push(['comment', goString(request.comment)]);
  const history = [...(parent.history ?? []).map((h) => goMarshal(h)), goObject(historyEntry)];
  const fields: Array<[string, string]> = [['architecture', goString(parent.architecture || goArch())]];
  if (request.author) fields.push(['author', goString(request.author)]);
  fields.push(
    ['config', goContainerConfig(plan.config)],
    ['container', goString(request.containerId)],
    ['container_config', goContainerConfig(request.containerConfig)],
    ['created', goString(created)],
    ['docker_version', goString(request.dockerVersion)],
    ['history', `[${history.join(',')}]`],
    ['os', goString(parent.os || 'linux')],
    [
      'rootfs',
      goObject([
        ['type', goString('layers')],
        ['diff_ids', goMarshal([...parent.rootfs.diff_ids, diffID])],
      ]),
    ],
  );
  const { digest: id } = await ctx.content.ingestComputed([Buffer.from(goObject(fields), 'utf8')]);
  await ctx.images.putImage({
    id,
    diffIDs: [...parent.rootfs.diff_ids, diffID],
    size: (parentMeta?.size ?? 0) + layer.size,
    parent: request.parentId,
    storedAt: new Date().toISOString(),
  });
  if (plan.ref !== undefined) {
    await ctx.images.setRefs([referenceString(plan.ref)], id);
    await ctx.images.updateImage(id, { lastTagTime: new Date().toISOString() });
  }
  ctx.log.info('committed', { id, container: request.containerId });
  return id;
}

/** What the daemon needs to commit: ImageService.commit. */
export interface ImageCommitter {
  /** Registers the image made from the container's writable layer; returns its record. */
  commit(request: CommitRequest): Promise<ImageRecord>;
}
