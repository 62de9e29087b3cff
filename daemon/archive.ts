/**
 * `docker cp` (HEAD/GET/PUT …/archive), `docker export` and `docker diff`.
 *
 * Where the work happens depends on the container's state, and the host never resolves a path
 * through a symlink the container controls (docs/security.md):
 * - running: the guest agent resolves and reads/writes inside the VM (RunningSandbox.statPath,
 *   archiveOut, archiveIn → guest/agent/archive.ts);
 * - created or stopped: nothing is mounted, so the daemon mounts the container's overlay (image
 *   layers + writable layer) at a private dir under the exec root and applies the same confined
 *   rules (common/rootfs-archive.ts) there, then unmounts it.
 * Both run under the container lock (ContainerService.withFilesystem) for the whole call, a tar
 * stream included, as dockerd holds its container lock: a start waits until the copy is over.
 *
 * `docker diff` reads the writable layer's upper dir with lstat only (overlay whiteouts are
 * deletions), in any state; /dev, /proc and /sys (the runtime's mount points) are left out, as
 * dockerd's init layer hides them.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { InvalidParameterError, NotFoundError, SystemError, messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';
import * as rootfsArchive from '../common/rootfs-archive';
import { RUNTIME_MOUNTPOINTS } from '../images/commit';
import { mountRootfs, unmountRootfs } from '../runtime/rootfs';
import type { GuestPathStat } from '../runtime/types';
import type { ContainerFilesystem } from './containers';
import { formatRFC3339Nano } from './time';

/** The X-Docker-Container-Path-Stat document (dockerd's ContainerPathStat JSON). */
export interface PathStatView {
  name: string;
  size: number;
  mode: number;
  mtime: string;
  linkTarget: string;
}

export interface ArchiveResult {
  stat: PathStatView;
  stream: Readable;
}

export interface ExtractOptions {
  noOverwriteDirNonDir: boolean;
  copyUIDGID: boolean;
}

/** One line of `docker diff`: Kind 0 = C(hanged), 1 = A(dded), 2 = D(eleted). */
export interface FilesystemChange {
  path: string;
  kind: 0 | 1 | 2;
}

/** Mounts a not-running container's overlay; returns the root to work in. */
export interface RootfsMounter {
  mount(layerDirs: string[], containerLayerDir: string, target: string): Promise<string>;
  unmount(target: string): Promise<void>;
}

/** Where not-running containers' filesystems are mounted for a call (under the exec root). */
export function archiveMountRoot(execRoot: string): string {
  return path.join(execRoot, 'fs');
}

/**
 * Unmounts what a daemon that died mid-copy left under the archive mount root, then empties it.
 * Call at daemon start, before any container can start (their writable layers may be in use).
 */
export async function clearStaleArchiveMounts(execRoot: string, log: Logger): Promise<void> {
  const root = archiveMountRoot(execRoot);
  const entries = await fs.readdir(root).catch(() => [] as string[]);
  for (const name of entries) {
    const target = path.join(root, name);
    try {
      await unmountRootfs(target);
      await fs.rmdir(target);
    } catch (err) {
      log.error('cannot clear a stale container filesystem mount', { target, error: messageOf(err) });
    }
  }
}

export const hostOverlayMounter: RootfsMounter = {
  async mount(layerDirs, containerLayerDir, target) {
    await mountRootfs(layerDirs, containerLayerDir, target);
    return target;
  },
  unmount: unmountRootfs,
};

export interface FilesystemProvider {
  withFilesystem<T>(ref: string, fn: (fs: ContainerFilesystem) => Promise<T>): Promise<T>;
}

/** The engine's errors → errdefs (the agent client maps the guest's to the same classes). */
export function archiveErrorToErrdefs(err: unknown): unknown {
  if (!(err instanceof rootfsArchive.RootfsArchiveError)) return err;
  switch (err.kind) {
    case 'NotFound':
      return new NotFoundError(err.message, { cause: err });
    case 'InvalidArgument':
      return new InvalidParameterError(err.message, { cause: err });
    default:
      return new SystemError(err.message, { cause: err });
  }
}

function statView(stat: GuestPathStat): PathStatView {
  return {
    name: stat.name,
    size: stat.size,
    mode: stat.mode,
    mtime: formatRFC3339Nano(stat.mtimeNs),
    linkTarget: stat.linkTarget,
  };
}

/** The header value: base64 of the JSON, as dockerd writes it. */
export function encodePathStat(stat: PathStatView): string {
  return Buffer.from(JSON.stringify(stat)).toString('base64');
}

export class ContainerArchive {
  constructor(
    private readonly containers: FilesystemProvider,
    private readonly log: Logger,
    private readonly mounter: RootfsMounter = hostOverlayMounter,
  ) {}

  /** Runs `fn` with a host root for a not-running container (mounted privately meanwhile). */
  private async withHostRoot<T>(cfs: ContainerFilesystem, fn: (root: string) => Promise<T>): Promise<T> {
    const name = `${cfs.record.id.slice(0, 12)}-${randomBytes(4).toString('hex')}`;
    const target = path.join(archiveMountRoot(cfs.execRoot), name);
    await fs.mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
    let root: string;
    try {
      root = await this.mounter.mount(cfs.layerDirs, cfs.containerLayerDir, target);
    } catch (err) {
      await fs.rm(target, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    try {
      return await fn(root);
    } finally {
      try {
        await this.mounter.unmount(target);
        await fs.rmdir(target).catch(() => undefined);
      } catch (err) {
        this.log.error('cannot unmount a container filesystem', { target, error: messageOf(err) });
      }
    }
  }

  private async run<T>(ref: string, fn: (cfs: ContainerFilesystem, root?: string) => Promise<T>): Promise<T> {
    try {
      return await this.containers.withFilesystem(ref, (cfs) =>
        cfs.sandbox ? fn(cfs) : this.withHostRoot(cfs, (root) => fn(cfs, root)),
      );
    } catch (err) {
      throw archiveErrorToErrdefs(err);
    }
  }

  /**
   * Opens a stream under the lock and the mount: resolves once it is open (errors before the
   * first byte reject), and keeps both until the stream is consumed or destroyed.
   */
  private streamWithin(
    ref: string,
    open: (cfs: ContainerFilesystem, root?: string) => Promise<{ stat?: PathStatView; stream: Readable }>,
  ): Promise<{ stat?: PathStatView; stream: Readable }> {
    return new Promise((resolve, reject) => {
      let opened = false;
      this.run(ref, async (cfs, root) => {
        const { stat, stream } = await open(cfs, root);
        const out = new PassThrough();
        opened = true;
        resolve({ ...(stat ? { stat } : {}), stream: out });
        await pipeline(stream, out).catch((err: unknown) => {
          if (!out.destroyed) out.destroy(err as Error);
          this.log.debug('archive stream ended early', { error: messageOf(err) });
        });
      }).catch((err: unknown) => {
        if (!opened) reject(err);
        else this.log.warn('archive stream failed', { error: messageOf(err) });
      });
    });
  }

  /** HEAD …/archive. */
  async statPath(ref: string, p: string): Promise<PathStatView> {
    checkPath(p);
    return this.run(ref, async (cfs, root) =>
      statView(
        root === undefined
          ? await (cfs.sandbox as NonNullable<ContainerFilesystem['sandbox']>).statPath(p, ref)
          : await rootfsArchive.statPath(root, p, ref),
      ),
    );
  }

  /** GET …/archive: the stat and the tar (dockerd's naming rules). */
  async archive(ref: string, p: string): Promise<ArchiveResult> {
    checkPath(p);
    const { stat, stream } = await this.streamWithin(ref, async (cfs, root) => {
      if (root !== undefined) {
        const out = await rootfsArchive.archiveOut(root, p, ref);
        return { stat: statView(out.stat), stream: out.stream };
      }
      const sandbox = cfs.sandbox as NonNullable<ContainerFilesystem['sandbox']>;
      const guestStat = await sandbox.statPath(p, ref);
      return { stat: statView(guestStat), stream: sandbox.archiveOut(p, ref, false) };
    });
    return { stat: stat as PathStatView, stream };
  }

  /** PUT …/archive: extracts `input` (a tar) into the directory `p`. */
  async extract(
    ref: string,
    p: string,
    input: AsyncIterable<Uint8Array>,
    options: ExtractOptions,
  ): Promise<void> {
    checkPath(p);
    return this.run(ref, async (cfs, root) => {
      const user = cfs.record.config.user;
      if (root === undefined) {
        const sandbox = cfs.sandbox as NonNullable<ContainerFilesystem['sandbox']>;
        await sandbox.archiveIn(p, ref, input, {
          noOverwriteDirNonDir: options.noOverwriteDirNonDir,
          copyUidGid: options.copyUIDGID,
          user,
        });
        return;
      }
      const chownTo = options.copyUIDGID ? await rootfsArchive.userIdsInRoot(root, user) : undefined;
      await rootfsArchive.extractInto(root, p, ref, input, {
        noOverwriteDirNonDir: options.noOverwriteDirNonDir,
        ...(chownTo ? { chownTo } : {}),
      });
    });
  }

  /** GET …/export: the whole merged rootfs. */
  async export(ref: string): Promise<Readable> {
    const { stream } = await this.streamWithin(ref, async (cfs, root) => ({
      stream:
        root !== undefined
          ? rootfsArchive.exportRootfs(root)
          : (cfs.sandbox as NonNullable<ContainerFilesystem['sandbox']>).archiveOut('/', ref, true),
    }));
    return stream;
  }

  /** GET …/changes. */
  changes(ref: string): Promise<FilesystemChange[]> {
    return this.containers.withFilesystem(ref, (cfs) => upperDirChanges(cfs.upperDir, cfs.layerDirs));
  }
}

/** dockerd: an empty path is 400 "bad parameter: path cannot be empty" (sic, without the space). */
function checkPath(p: string): void {
  if (p === '') throw new InvalidParameterError('bad parameter: pathcannot be empty');
}

function isWhiteout(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** lstat every component of `rel` under `dir`, stopping at a non-directory: never follows links. */
async function existsUnder(dir: string, rel: string): Promise<boolean> {
  const parts = rel.split('/');
  let current = dir;
  for (let i = 0; i < parts.length; i++) {
    current = path.join(current, parts[i] as string);
    const st = await fs.lstat(current).catch(() => undefined);
    if (st === undefined) return false;
    if (i === parts.length - 1) return !isWhiteout(st);
    if (!st.isDirectory()) return false;
  }
  return false;
}

/**
 * The changes of an overlay upper dir against its lower dirs (lowest first), sorted by path as
 * dockerd lists them: a whiteout is D, a path some lower layer has is C, any other A.
 */
export async function upperDirChanges(
  upperDir: string,
  lowerDirs: readonly string[],
): Promise<FilesystemChange[]> {
  const changes: FilesystemChange[] = [];
  const lowersTopFirst = [...lowerDirs].reverse();
  const walk = async (rel: string): Promise<void> => {
    const entries = await fs.readdir(path.join(upperDir, rel)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw err;
    });
    for (const name of entries.sort()) {
      if (rel === '' && RUNTIME_MOUNTPOINTS.has(name)) continue;
      const childRel = rel === '' ? name : `${rel}/${name}`;
      const st = await fs.lstat(path.join(upperDir, childRel));
      if (isWhiteout(st)) {
        changes.push({ path: `/${childRel}`, kind: 2 });
        continue;
      }
      let inLower = false;
      for (const lower of lowersTopFirst) {
        if (await existsUnder(lower, childRel)) {
          inLower = true;
          break;
        }
      }
      changes.push({ path: `/${childRel}`, kind: inLower ? 0 : 1 });
      if (st.isDirectory()) await walk(childRel);
    }
  };
  await walk('');
  return changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
