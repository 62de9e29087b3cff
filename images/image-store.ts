/**
 * Image metadata: which images exist and which names point at them.
 *
 *   <root>/imagedb/sha256/<id hex>.json  {id, diffIDs, size, manifestDigest?, created, pulledAt}
 *                                         written only once every layer is unpacked
 *   <root>/repositories.json              {"Repositories": {"<full name>": {"<full ref>": "<id>"}}}
 *                                         (dockerd's shape): tags and repo digests
 *   the config itself                     the content store's blob named by the id
 *
 * Every write goes through writeJsonAtomic under one in-process lock, then the in-memory view is
 * updated (persist, then publish). An image record exists only for a complete image, so a
 * half-pulled image is never listed, and a reference is only ever set to a recorded image.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeJsonAtomic } from '../common/atomic-write';
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

  getImage(id: string): ImageMeta | undefined {
    return this.images.get(id);
  }

  allImages(): ImageMeta[] {
    return [...this.images.values()];
  }

  /** Full ids starting with `hexPrefix` (no "sha256:"). */
  searchIds(hexPrefix: string): string[] {
    const out: string[] = [];
    for (const id of this.images.keys()) if (id.startsWith(`sha256:${hexPrefix}`)) out.push(id);
    return out;
  }

  /** The image a full reference string points at. */
  resolveRef(ref: string): string | undefined {
    return this.refs.get(ref);
  }

  /** Full reference strings pointing at `id`. */
  refsOf(id: string): string[] {
    const out: string[] = [];
    for (const [ref, target] of this.refs) if (target === id) out.push(ref);
    return out;
  }

  /** Records a complete image (all layers unpacked, config committed). */
  async putImage(meta: ImageMeta): Promise<void> {
    assertSha256Digest(meta.id);
    await this.lock.run(async () => {
      await writeJsonAtomic(path.join(this.imagesDir, `${meta.id.slice(7)}.json`), meta);
      this.images.set(meta.id, meta);
    });
  }

  /**
   * Points each full reference string at `id` (which must be recorded); returns the ids they
   * pointed at before (undefined where new).
   */
  async setRefs(refs: string[], id: string): Promise<Array<string | undefined>> {
    return this.lock.run(async () => {
      if (!this.images.has(id)) throw new Error(`image ${id} is not recorded`);
      const previous = refs.map((r) => this.refs.get(r));
      const next = new Map(this.refs);
      for (const r of refs) next.set(r, id);
      await writeJsonAtomic(this.repositoriesPath, serialise(next));
      for (const r of refs) this.refs.set(r, id);
      return previous;
    });
  }
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
