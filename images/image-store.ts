/**
 * Image metadata: which images exist and which names point at them.
 *
 *   <root>/imagedb/sha256/<id hex>.json  {id, diffIDs, size, manifestDigest?, manifests?, parent?,
 *                                         lastTagTime?, retained?, storedAt}
 *                                         written only once every layer is unpacked
 *   <root>/repositories.json              {"Repositories": {"<full name>": {"<full ref>": "<id>"}}}
 *                                         (dockerd's shape): tags and repo digests
 *   the config itself                     the content store's blob named by the id
 *
 * Every write goes through writeJsonAtomic under one in-process lock, then the in-memory view is
 * updated (persist, then publish). An image record exists only for a complete image, so a
 * half-pulled image is never listed, and a reference is only ever set to a recorded image.
 *
 * A removed image that a container still uses is kept as a *retained* record: invisible to
 * lookups and listings (as in dockerd, where the container's layer reference keeps only the
 * layers), but its layers stay until no container uses it. Setting a reference on it (pulling or
 * loading it again) makes it visible again.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { syncDir, writeJsonAtomic } from '../common/atomic-write';
import type { Logger } from '../common/logger';
import { assertSha256Digest } from './content-store';

export interface ImageMeta {
  /** "sha256:<hex>": the config digest. */
  id: string;
  diffIDs: string[];
  /** Sum of unpacked layer sizes. */
  size: number;
  /** The digest of the manifest (or index) it was pulled by, when pulled. */
  manifestDigest?: string;
  /** Every manifest / index blob stored for this image (kept in the content store). */
  manifests?: string[];
  /** The parent image id (images made by commit or the classic builder). */
  parent?: string;
  /** When a tag was last set on it (dockerd's Metadata.LastTagTime), RFC 3339. */
  lastTagTime?: string;
  /** Removed, but kept for a container that uses it (see the module comment). */
  retained?: boolean;
  /** When the image was stored (RFC 3339). */
  storedAt: string;
}

interface RepositoriesFile {
  Repositories: Record<string, Record<string, string>>;
}

/** A small async mutex: runs critical sections one after another. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

export class ImageStore {
  private readonly imagesDir: string;
  private readonly repositoriesPath: string;
  private readonly images = new Map<string, ImageMeta>();
  /** Full reference string ("docker.io/library/busybox:latest", "…/bb@sha256:…") → image id. */
  private readonly refs = new Map<string, string>();
  private readonly lock = new Mutex();

  constructor(
    root: string,
    private readonly log: Logger,
  ) {
    this.imagesDir = path.join(root, 'imagedb', 'sha256');
    this.repositoriesPath = path.join(root, 'repositories.json');
  }

  async init(): Promise<void> {
    await fs.mkdir(this.imagesDir, { recursive: true, mode: 0o700 });
    for (const name of await fs.readdir(this.imagesDir)) {
      if (!/^[a-f0-9]{64}\.json$/.test(name)) continue;
      try {
        const meta = JSON.parse(await fs.readFile(path.join(this.imagesDir, name), 'utf8')) as ImageMeta;
        if (meta.id === `sha256:${name.slice(0, 64)}`) this.images.set(meta.id, meta);
      } catch (err) {
        this.log.warn('skipping unreadable image record', { name, error: (err as Error).message });
      }
    }
    let file: RepositoriesFile | undefined;
    try {
      file = JSON.parse(await fs.readFile(this.repositoriesPath, 'utf8')) as RepositoriesFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const refs of Object.values(file?.Repositories ?? {})) {
      for (const [ref, id] of Object.entries(refs)) {
        if (this.images.has(id)) this.refs.set(ref, id);
      }
    }
  }

  /** A visible image (not retained). */
  getImage(id: string): ImageMeta | undefined {
    const meta = this.images.get(id);
    return meta?.retained ? undefined : meta;
  }

  /** Any recorded image, retained ones included. */
  getAnyImage(id: string): ImageMeta | undefined {
    return this.images.get(id);
  }

  /** Visible images. */
  allImages(): ImageMeta[] {
    return [...this.images.values()].filter((m) => !m.retained);
  }

  /** Every recorded image, retained ones included. */
  allRecorded(): ImageMeta[] {
    return [...this.images.values()];
  }

  /** Visible images whose parent is `id`. */
  children(id: string): string[] {
    return this.allImages()
      .filter((m) => m.parent === id)
      .map((m) => m.id);
  }

  /** Full ids of visible images starting with `hexPrefix` (no "sha256:"). */
  searchIds(hexPrefix: string): string[] {
    const out: string[] = [];
    for (const [id, meta] of this.images) {
      if (!meta.retained && id.startsWith(`sha256:${hexPrefix}`)) out.push(id);
    }
    return out;
  }

  /** The image a full reference string points at. */
  resolveRef(ref: string): string | undefined {
    return this.refs.get(ref);
  }

  /** Full reference strings pointing at `id`, sorted (dockerd sorts by the full string). */
  refsOf(id: string): string[] {
    const out: string[] = [];
    for (const [ref, target] of this.refs) if (target === id) out.push(ref);
    return out.sort(compareRefs);
  }

  /** Every full reference string with the image it points at, sorted by reference. */
  allRefs(): Array<[string, string]> {
    return [...this.refs.entries()].sort((a, b) => compareRefs(a[0], b[0]));
  }

  /** Records a complete image (all layers unpacked, config committed). */
  async putImage(meta: ImageMeta): Promise<void> {
    assertSha256Digest(meta.id);
    await this.lock.run(() => this.writeMeta(meta));
  }

  /**
   * Points each full reference string at `id` (which must be recorded); returns the ids they
   * pointed at before (undefined where new).
   */
  async setRefs(refs: string[], id: string): Promise<Array<string | undefined>> {
    return this.lock.run(async () => {
      const meta = this.images.get(id);
      if (meta === undefined) throw new Error(`image ${id} is not recorded`);
      if (meta.retained) {
        // Named again: visible again.
        const revived: ImageMeta = { ...meta };
        delete revived.retained;
        await this.writeMeta(revived);
      }
      const previous = refs.map((r) => this.refs.get(r));
      const next = new Map(this.refs);
      for (const r of refs) next.set(r, id);
      await writeJsonAtomic(this.repositoriesPath, serialise(next));
      for (const r of refs) this.refs.set(r, id);
      return previous;
    });
  }

  /** Removes references (absent ones are ignored); returns those that existed. */
  async deleteRefs(refs: string[]): Promise<string[]> {
    return this.lock.run(async () => {
      const present = refs.filter((r) => this.refs.has(r));
      if (present.length === 0) return [];
      const next = new Map(this.refs);
      for (const r of present) next.delete(r);
      await writeJsonAtomic(this.repositoriesPath, serialise(next));
      for (const r of present) this.refs.delete(r);
      return present;
    });
  }

  /** Rewrites an image record with `patch` applied (no-op when the image is gone). */
  async updateImage(id: string, patch: Partial<Omit<ImageMeta, 'id'>>): Promise<void> {
    await this.lock.run(async () => {
      const meta = this.images.get(id);
      if (meta === undefined) return;
      await this.writeMeta({ ...meta, ...patch });
    });
  }

  /**
   * Removes an image record and any reference still pointing at it. The references go first, so
   * a crash in between leaves a dangling (unnamed) image, never a name pointing at nothing.
   */
  async deleteImage(id: string): Promise<void> {
    assertSha256Digest(id);
    await this.lock.run(async () => {
      const stale = [...this.refs.entries()].filter(([, target]) => target === id).map(([r]) => r);
      if (stale.length > 0) {
        const next = new Map(this.refs);
        for (const r of stale) next.delete(r);
        await writeJsonAtomic(this.repositoriesPath, serialise(next));
        for (const r of stale) this.refs.delete(r);
      }
      await fs.rm(path.join(this.imagesDir, `${id.slice(7)}.json`), { force: true });
      await syncDir(this.imagesDir);
      this.images.delete(id);
    });
  }

  /** Caller holds the lock. */
  private async writeMeta(meta: ImageMeta): Promise<void> {
    await writeJsonAtomic(path.join(this.imagesDir, `${meta.id.slice(7)}.json`), meta);
    this.images.set(meta.id, meta);
  }
}

function compareRefs(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function repositoryOf(ref: string): string {
  const at = ref.indexOf('@');
  const withoutDigest = at >= 0 ? ref.slice(0, at) : ref;
  const colon = withoutDigest.lastIndexOf(':');
  const slash = withoutDigest.lastIndexOf('/');
  return colon > slash ? withoutDigest.slice(0, colon) : withoutDigest;
}

function serialise(refs: Map<string, string>): RepositoriesFile {
  const out: RepositoriesFile = { Repositories: {} };
  for (const [ref, id] of [...refs.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const repo = repositoryOf(ref);
    (out.Repositories[repo] ??= {})[ref] = id;
  }
  return out;
}
