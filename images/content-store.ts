/**
 * Content-addressed blob store (after containerd's content store): ingest → verify → commit.
 *
 *   <root>/blobs/sha256/<hex>   committed blobs, read-only (0444), named by their verified digest
 *   <root>/ingest/<random>      blobs being written; never read as content
 *
 * A blob is written to a private temp file under ingest/ while its sha256 and length are computed,
 * fsynced, and renamed into blobs/ only when both match what the caller expected; otherwise the temp
 * file is removed and DataLossError is thrown. Since the rename is atomic and blobs/ holds only
 * renamed, verified files, a reader never sees a partial or unverified blob. Digests are checked
 * against a strict "sha256:<64 lowercase hex>" pattern before they become file names.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, promises as fs, constants as fsConstants } from 'node:fs';
import type { Readable } from 'node:stream';
import * as path from 'node:path';
import { DataLossError, InvalidParameterError } from '../common/errdefs';
import { syncDir } from '../common/atomic-write';
import { isSha256Digest } from './reference';

export interface IngestOptions {
  /** Expected length in bytes, when the descriptor gives one. */
  size?: number;
  /** Called with the running byte count after each chunk. */
  onBytes?: (written: number) => void;
  signal?: AbortSignal;
}

export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** Throws InvalidParameterError unless `digest` is a well-formed sha256 digest. */
export function assertSha256Digest(digest: string): void {
  if (!isSha256Digest(digest)) {
    if (/^sha256:/.test(digest)) throw new InvalidParameterError(`invalid digest ${JSON.stringify(digest)}`);
    throw new InvalidParameterError(`unsupported digest algorithm: ${JSON.stringify(digest)}`);
  }
}

export class ContentStore {
  readonly blobsDir: string;
  readonly ingestDir: string;

  constructor(readonly root: string) {
    this.blobsDir = path.join(root, 'blobs', 'sha256');
    this.ingestDir = path.join(root, 'ingest');
  }

  /** Creates the directories and drops ingests a previous run left behind. */
  async init(): Promise<void> {
    await fs.mkdir(this.blobsDir, { recursive: true, mode: 0o700 });
    await fs.rm(this.ingestDir, { recursive: true, force: true });
    await fs.mkdir(this.ingestDir, { recursive: true, mode: 0o700 });
  }

  blobPath(digest: string): string {
    assertSha256Digest(digest);
    return path.join(this.blobsDir, digest.slice('sha256:'.length));
  }

  async has(digest: string): Promise<boolean> {
    try {
      const st = await fs.lstat(this.blobPath(digest));
      return st.isFile();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  async size(digest: string): Promise<number> {
    return (await fs.lstat(this.blobPath(digest))).size;
  }

  async read(digest: string): Promise<Buffer> {
    return fs.readFile(this.blobPath(digest));
  }

  /** Verifies and commits an in-memory blob (manifests, configs). */
  async writeBlob(expectedDigest: string, data: Uint8Array): Promise<void> {
    await this.ingest(expectedDigest, [data], { size: data.byteLength });
  }

  /**
   * Streams `source` into the store under `expectedDigest`. Resolves once the verified blob is
   * committed; on any failure (digest or size mismatch, stream error, abort) the temp file is
   * removed and nothing is committed.
   */
  async ingest(
    expectedDigest: string,
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options: IngestOptions = {},
  ): Promise<void> {
    const target = this.blobPath(expectedDigest);
    const tmp = path.join(this.ingestDir, `${expectedDigest.slice(7, 19)}-${randomBytes(8).toString('hex')}`);
    const handle = await fs.open(
      tmp,
      fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
      0o600,
    );
    const hash = createHash('sha256');
    let written = 0;
    let committed = false;
    try {
      try {
        for await (const chunk of source) {
          options.signal?.throwIfAborted();
          hash.update(chunk);
          written += chunk.byteLength;
          if (options.size !== undefined && written > options.size) {
            throw new DataLossError(
              `unexpected commit size: blob ${expectedDigest} is longer than the expected ${options.size} bytes`,
            );
          }
          await handle.write(chunk);
          options.onBytes?.(written);
        }
        if (options.size !== undefined && written !== options.size) {
          throw new DataLossError(
            `unexpected commit size ${written}, expected ${options.size} for blob ${expectedDigest}`,
          );
        }
        const actual = `sha256:${hash.digest('hex')}`;
        if (actual !== expectedDigest) {
          throw new DataLossError(
            `verification failed for digest ${expectedDigest}: content has digest ${actual}`,
          );
        }
        await handle.chmod(0o444);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fs.rename(tmp, target);
      committed = true;
      await syncDir(this.blobsDir);
    } finally {
      if (!committed) await fs.rm(tmp, { force: true });
    }
  }

  /**
   * Streams `source` into the store under the digest its bytes have (content whose digest nobody
   * announced: an imported tarball, a layer compressed here). Returns the digest and length.
   */
  async ingestComputed(
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options: Omit<IngestOptions, 'size'> = {},
  ): Promise<{ digest: string; size: number }> {
    const file = await this.spool(source, options);
    try {
      await this.commitSpooled(file.path, file.digest);
    } finally {
      await fs.rm(file.path, { force: true });
    }
    return { digest: file.digest, size: file.size };
  }

  /**
   * Writes `source` to a private file under ingest/ and returns its digest: content staged for a
   * later commitSpooled (or removal). Used by load, which reads a whole archive before deciding.
   */
  async spool(
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options: Omit<IngestOptions, 'size'> & { dir?: string } = {},
  ): Promise<{ path: string; digest: string; size: number }> {
    const dir = options.dir ?? this.ingestDir;
    const tmp = path.join(dir, `spool-${randomBytes(8).toString('hex')}`);
    const handle = await fs.open(
      tmp,
      fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
      0o600,
    );
    const hash = createHash('sha256');
    let written = 0;
    let ok = false;
    try {
      for await (const chunk of source) {
        options.signal?.throwIfAborted();
        hash.update(chunk);
        written += chunk.byteLength;
        await handle.write(chunk);
        options.onBytes?.(written);
      }
      await handle.sync();
      ok = true;
    } finally {
      await handle.close();
      if (!ok) await fs.rm(tmp, { force: true });
    }
    return { path: tmp, digest: `sha256:${hash.digest('hex')}`, size: written };
  }

  /**
   * Commits a file written by spool() under the digest spool() computed for it (the file is
   * private to the daemon and unchanged since). Moves it when the blob is new; otherwise the
   * file is left for the caller to remove.
   */
  async commitSpooled(file: string, digest: string): Promise<void> {
    const target = this.blobPath(digest);
    if (!path.resolve(file).startsWith(this.ingestDir + path.sep)) {
      throw new InvalidParameterError(`not a spooled file: ${file}`);
    }
    if (await this.has(digest)) return;
    await fs.chmod(file, 0o444);
    await fs.link(file, target).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await syncDir(this.blobsDir);
  }

  /** Every committed blob's digest. */
  async list(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await fs.readdir(this.blobsDir)) {
      if (/^[a-f0-9]{64}$/.test(name)) out.push(`sha256:${name}`);
    }
    return out;
  }

  /** The first `length` bytes of a committed blob (fewer when it is shorter). */
  async readHead(digest: string, length: number): Promise<Buffer> {
    const handle = await fs.open(this.blobPath(digest), fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buf, 0, length, 0);
      return buf.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  /** Reads a committed blob as a stream. */
  openRead(digest: string, options: { highWaterMark?: number } = {}): Readable {
    return createReadStream(this.blobPath(digest), { highWaterMark: options.highWaterMark ?? 256 * 1024 });
  }

  /** Removes a blob (a no-op when absent). */
  async delete(digest: string): Promise<void> {
    await fs.rm(this.blobPath(digest), { force: true });
  }
}
