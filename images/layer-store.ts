/**
 * Unpacked layers, one directory per diffID, each unpacked once.
 *
 *   <root>/layers/<diffID hex>/          the layer's files (an overlay lower dir), read-only use
 *   <root>/layers/.tmp-<hex>-<random>/   an extraction in progress (removed at start-up)
 *   <root>/layerdb/sha256/<hex>.json     {diffID, size, blobDigest, tarSize, pushBlob?,
 *                                         repositories?, foreign?}: written before the rename
 *
 * A layer exists when both its record and its directory exist. The record is written (atomically)
 * before the extracted directory is renamed into place, so a crash between the two leaves a record
 * without a directory, which reads as absent and is unpacked again. Concurrent requests for the
 * same diffID within this process share one extraction (a per-diffID in-flight promise), so two
 * pulls never unpack the same layer twice; the daemon is the only process writing this root.
 *
 * Deletion is the reverse: the record goes first (the layer reads as absent from then on), then
 * the directory is renamed to a `.tmp-` name (swept at start-up) and removed. The image service
 * deletes only layers no image references, with no pull, load or import in flight.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { DataLossError } from '../common/errdefs';
import { syncDir, writeJsonAtomic } from '../common/atomic-write';
import type { Logger } from '../common/logger';
import { assertSha256Digest } from './content-store';
import { SharedWork } from './shared-work';
import { directorySize, extractLayerFile } from './unpack';

/** A gzip blob of the layer, as pushed to registries. */
export interface PushBlob {
  digest: string;
  size: number;
}

export interface LayerInfo {
  diffID: string;
  /** dockerd's layer size: bytes of non-directory entries, hardlinks once. */
  size: number;
  /** The blob (gzip or plain tar) it was unpacked from, kept in the content store. */
  blobDigest?: string;
  /** Length of the uncompressed layer tar (what `docker save` writes as layer.tar). */
  tarSize?: number;
  /** The gzip blob pushes use: the pulled blob when it is gzip, else one made on first push. */
  pushBlob?: PushBlob;
  /** Repositories ("127.0.0.1:5000/bb") known to hold pushBlob (pulled from or pushed to). */
  repositories?: string[];
  /**
   * A foreign / non-distributable layer (its descriptor had `urls`): the descriptor a push puts
   * in the manifest instead of uploading the blob (blobDigest is its digest), as dockerd.
   */
  foreign?: ForeignLayer;
  /** Absolute path of the unpacked directory. */
  dir: string;
}

/** The descriptor of a foreign layer, less its digest (the layer's blobDigest). */
export interface ForeignLayer {
  mediaType: string;
  size: number;
  urls: string[];
}

type LayerRecord = Omit<LayerInfo, 'dir'>;

export interface UnpackOptions {
  /** Compressed bytes consumed so far, of `total`. */
  onProgress?: (current: number) => void;
  signal?: AbortSignal;
  /** The blob is a gzip blob usable for pushes (recorded as pushBlob). */
  pushBlob?: PushBlob;
  /** The repository the blob came from ("127.0.0.1:5000/bb"), for push's existence checks. */
  repository?: string;
  /** The layer is foreign (see LayerInfo.foreign). */
  foreign?: ForeignLayer;
}

export class LayerStore {
  readonly layersDir: string;
  private readonly dbDir: string;
  /**
   * Unpacks in progress, by diffID, shared by their callers (SharedWork): one caller's
   * cancellation ends its own wait; the unpack itself is aborted only when no caller waits any
   * more (as dockerd shares a layer between pulls).
   */
  private readonly inflight = new Map<string, SharedWork<LayerInfo, number>>();
  /** How many extractions ran (for tests: "unpacked once"). */
  unpackCount = 0;

  constructor(
    root: string,
    private readonly log: Logger,
  ) {
    this.layersDir = path.join(root, 'layers');
    this.dbDir = path.join(root, 'layerdb', 'sha256');
  }

  async init(): Promise<void> {
    await fs.mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.dbDir, { recursive: true, mode: 0o700 });
    for (const name of await fs.readdir(this.layersDir)) {
      if (name.startsWith('.tmp-'))
        await fs.rm(path.join(this.layersDir, name), { recursive: true, force: true });
    }
  }

  private hex(diffID: string): string {
    assertSha256Digest(diffID);
    return diffID.slice('sha256:'.length);
  }

  dir(diffID: string): string {
    return path.join(this.layersDir, this.hex(diffID));
  }

  private recordPath(diffID: string): string {
    return path.join(this.dbDir, `${this.hex(diffID)}.json`);
  }

  /** The committed layer, or undefined when it is not (completely) there. */
  async get(diffID: string): Promise<LayerInfo | undefined> {
    let record: LayerRecord;
    try {
      record = JSON.parse(await fs.readFile(this.recordPath(diffID), 'utf8')) as LayerRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const dir = this.dir(diffID);
    try {
      const st = await fs.lstat(dir);
      if (!st.isDirectory()) return undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return { ...record, diffID, dir };
  }

  /** Every committed layer (records whose directory exists). */
  async all(): Promise<LayerInfo[]> {
    const out: LayerInfo[] = [];
    for (const name of await fs.readdir(this.dbDir)) {
      const m = /^([a-f0-9]{64})\.json$/.exec(name);
      if (!m) continue;
      const info = await this.get(`sha256:${m[1] ?? ''}`);
      if (info !== undefined) out.push(info);
    }
    return out;
  }

  /** diffIDs with a record (complete or not), for garbage collection. */
  async recordedIds(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await fs.readdir(this.dbDir)) {
      const m = /^([a-f0-9]{64})\.json$/.exec(name);
      if (m) out.push(`sha256:${m[1] ?? ''}`);
    }
    for (const name of await fs.readdir(this.layersDir)) {
      if (/^[a-f0-9]{64}$/.test(name) && !out.includes(`sha256:${name}`)) out.push(`sha256:${name}`);
    }
    return out;
  }

  /**
   * Rewrites a layer's record with `fn` applied (atomically; serialised per process by the
   * caller's lock). No-op when the layer is gone.
   */
  async update(diffID: string, fn: (record: LayerRecord) => LayerRecord): Promise<void> {
    const info = await this.get(diffID);
    if (info === undefined) return;
    const { dir: _dir, ...record } = info;
    await writeJsonAtomic(this.recordPath(diffID), fn(record));
  }

  /** Deletes a layer: record first, then the directory (see the module comment). */
  async delete(diffID: string): Promise<void> {
    if (this.inflight.has(diffID)) throw new Error(`layer ${diffID} is being unpacked`);
    await fs.rm(this.recordPath(diffID), { force: true });
    await syncDir(this.dbDir);
    const dir = this.dir(diffID);
    const trash = path.join(
      this.layersDir,
      `.tmp-del-${this.hex(diffID).slice(0, 12)}-${randomBytes(6).toString('hex')}`,
    );
    try {
      await fs.rename(dir, trash);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    await fs.rm(trash, { recursive: true, force: true });
  }

  /**
   * Unpacks `blobPath` as layer `diffID` unless it is already there (or being unpacked, in which
   * case this waits for that). The uncompressed stream must hash to `diffID` (DataLossError).
   */
  async unpack(
    diffID: string,
    blobPath: string,
    blobDigest: string,
    options: UnpackOptions = {},
  ): Promise<LayerInfo> {
    let shared = this.inflight.get(diffID);
    if (shared === undefined) {
      const work: SharedWork<LayerInfo, number> = new SharedWork(
        async (signal, onProgress) => {
          const existing = await this.get(diffID);
          if (existing !== undefined) return existing;
          return this.unpackNow(diffID, blobPath, blobDigest, { ...options, signal, onProgress });
        },
        () => {
          // Done or abandoned: a later caller starts afresh.
          if (this.inflight.get(diffID) === work) this.inflight.delete(diffID);
        },
      );
      shared = work;
      this.inflight.set(diffID, work);
    }
    return shared.join(options.signal, options.onProgress);
  }

  private async unpackNow(
    diffID: string,
    blobPath: string,
    blobDigest: string,
    options: UnpackOptions,
  ): Promise<LayerInfo> {
    const hex = this.hex(diffID);
    const tmp = path.join(this.layersDir, `.tmp-${hex.slice(0, 12)}-${randomBytes(6).toString('hex')}`);
    await fs.mkdir(tmp, { mode: 0o755 });
    await fs.chmod(tmp, 0o755);
    let committed = false;
    try {
      this.unpackCount++;
      const started = Date.now();
      const { diffID: actual, tarSize } = await extractLayerFile(blobPath, tmp, {
        log: this.log,
        ...(options.onProgress ? { onInputBytes: options.onProgress } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
      if (actual !== diffID) {
        throw new DataLossError(
          `failed to register layer: layer ${blobDigest} has diffID ${actual}, the image config expects ${diffID}`,
        );
      }
      const size = await directorySize(tmp);
      const final = this.dir(diffID);
      // A directory without a record (a crash before the record was written) is stale.
      await fs.rm(final, { recursive: true, force: true });
      const record: LayerRecord = {
        diffID,
        size,
        blobDigest,
        tarSize,
        ...(options.pushBlob ? { pushBlob: options.pushBlob } : {}),
        ...(options.repository ? { repositories: [options.repository] } : {}),
        ...(options.foreign ? { foreign: options.foreign } : {}),
      };
      await writeJsonAtomic(this.recordPath(diffID), record);
      await fs.rename(tmp, final);
      committed = true;
      await syncDir(this.layersDir);
      this.log.debug('layer unpacked', { diffID, blobDigest, size, ms: Date.now() - started });
      return { ...record, dir: final };
    } finally {
      if (!committed) await fs.rm(tmp, { recursive: true, force: true });
    }
  }
}
