/**
 * `docker load` of a docker-archive tarball (what `docker save` writes: manifest.json, configs,
 * layer tars) or an OCI image layout tarball (oci-layout, index.json, blobs/sha256/…), plain or
 * gzip-compressed, with dockerd's output lines.
 *
 * Threat: the archive comes from the API caller. Nothing in it is ever written to disk under a
 * name it chooses: each regular file is spooled to a private file with a random name in the
 * content store's ingest directory while its sha256 is computed, and symlinks and hardlinks are
 * only recorded, then resolved inside the archive's own name space (a link that climbs out of it
 * is an error). Every blob is verified before it is committed — OCI blobs against their names
 * and descriptors, docker-archive layers against the config's diffIDs — and layers are unpacked
 * by the same safe extractor as pulls. An image is recorded only once its config and all its
 * layers are committed; the spool directory is removed whatever happens.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { PassThrough, pipeline, type Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { CapsuleError, DataLossError, InvalidParameterError } from '../common/errdefs';
import { cleanEntryName } from '../common/rootfs-archive';
import { parseImageConfig } from './image-config';
import type { ImageMeta } from './image-store';
import type { ServiceContext } from './internals';
import { shortId } from './internals';
import {
  MediaType,
  assertImageManifest,
  parseManifest,
  parsePlatform,
  selectManifest,
  type Descriptor,
} from './manifest';
import { progressLine, ProgressThrottle } from './progress';
import { familiarString, parseNormalizedNamed, referenceString, type Reference } from './reference';
import { decompressors, detectCompression, peekCompression, type Compression } from './unpack';
import type { LoadProgress } from './types';

const MAX_ENTRIES = 100_000;
const MAX_JSON_BYTES = 16 * 1024 * 1024;
const MAX_LINK_HOPS = 16;

interface SpooledFile {
  kind: 'file';
  path: string;
  digest: string;
  size: number;
}
type ArchiveEntry = SpooledFile | { kind: 'link'; target: string } | { kind: 'dir' };

/** The archive's files, by cleaned name, spooled under a private directory. */
export class SpooledArchive {
  readonly entries = new Map<string, ArchiveEntry>();

  constructor(readonly dir: string) {}

  /** The file at `name`, following symlinks and hardlinks inside the archive. */
  resolve(name: string): SpooledFile {
    let current = cleanEntryName(name);
    for (let hop = 0; hop <= MAX_LINK_HOPS && current !== null; hop++) {
      const entry = this.entries.get(current);
      if (entry === undefined) throw new DataLossError(`invalid archive: ${JSON.stringify(name)} is missing`);
      if (entry.kind === 'file') return entry;
      if (entry.kind === 'dir')
        throw new DataLossError(`invalid archive: ${JSON.stringify(name)} is a directory`);
      current = entry.target === '' ? null : cleanEntryName(entry.target);
    }
    throw new DataLossError(`invalid archive: ${JSON.stringify(name)} links outside the archive or too deep`);
  }

  has(name: string): boolean {
    const clean = cleanEntryName(name);
    return clean !== null && this.entries.has(clean);
  }

  async readJson(name: string): Promise<unknown> {
    const file = this.resolve(name);
    if (file.size > MAX_JSON_BYTES) throw new DataLossError(`invalid archive: ${name} is too large`);
    try {
      return JSON.parse(await fs.readFile(file.path, 'utf8')) as unknown;
    } catch {
      throw new DataLossError(`invalid archive: ${name} is not valid JSON`);
    }
  }

  async remove(): Promise<void> {
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

/** The target of a symlink entry, as an archive path (relative to the archive root). */
function linkTarget(entryName: string, linkname: string): string {
  if (linkname.startsWith('/')) return linkname;
  const dir = path.posix.dirname(entryName);
  // Keep ".." visible to cleanEntryName, which refuses to climb above the root.
  return dir === '.' ? linkname : `${dir}/${linkname}`;
}

/**
 * dockerd's text for an archive it cannot read. Its loader untars in a re-exec'd child, so tar
 * errors read "Error processing tar file(exit status 1): <Go's archive/tar error>"; a broken
 * deflate stream fails in the decompressor instead: "Error processing tar file(flate: corrupt
 * input before offset N): " — zlib does not say where, so the offset is left out here.
 */
function tarErrorText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const message = e?.message ?? String(err);
  if (/Invalid tar header/i.test(message))
    return 'Error processing tar file(exit status 1): archive/tar: invalid tar header';
  if (
    /Unexpected end of data|unexpected end of file|unexpected EOF/i.test(message) ||
    e?.code === 'Z_BUF_ERROR'
  ) {
    return 'Error processing tar file(exit status 1): unexpected EOF';
  }
  if (e?.code === 'Z_DATA_ERROR') {
    return 'Error processing tar file(flate: corrupt input): ';
  }
  return `Error processing tar file(exit status 1): ${message}`;
}

/** Reads a (possibly gzip-compressed) tar stream into a spool directory. */
export async function spoolArchive(
  ctx: Pick<ServiceContext, 'content'>,
  input: AsyncIterable<Uint8Array>,
  signal?: AbortSignal,
): Promise<SpooledArchive> {
  const dir = path.join(ctx.content.ingestDir, `load-${randomBytes(8).toString('hex')}`);
  await fs.mkdir(dir, { mode: 0o700 });
  const archive = new SpooledArchive(dir);
  try {
    const { compression, source } = await peekCompression(input, signal);
    const decompress = decompressors(compression, 'archive');
    const extract = tar.extract();
    const plain = new PassThrough();
    const fed = new Promise<void>((resolve, reject) => {
      pipeline(
        [source() as unknown as Readable, ...decompress, plain] as unknown as [Readable, PassThrough],
        (err) => (err ? reject(err) : resolve()),
      );
    });
    // A failed input (or gunzip) ends the parser with the reason, which the loop below rethrows.
    let feedError: unknown;
    // The parser's own error ("Unexpected end of data") says more than the entry stream it
    // destroyed ("Stream was destroyed"), which is what a reader of that entry sees first.
    let parseError: unknown;
    extract.on('error', (err: Error) => {
      parseError ??= err;
    });
    fed.catch((err: Error) => {
      feedError = err;
      extract.destroy(err);
    });
    plain.pipe(extract as unknown as NodeJS.WritableStream);
    let count = 0;
    try {
      for await (const entry of extract) {
        if (++count > MAX_ENTRIES) throw new DataLossError('invalid archive: too many entries');
        const header = entry.header;
        const name = cleanEntryName(header.name);
        if (name === null || name === '') {
          entry.resume();
          if (name === null) throw new DataLossError(`invalid archive entry ${JSON.stringify(header.name)}`);
          continue;
        }
        const previous = archive.entries.get(name);
        if (previous?.kind === 'file') await fs.rm(previous.path, { force: true });
        switch (header.type) {
          case 'file':
          case 'contiguous-file': {
            const file = await ctx.content.spool(entry as AsyncIterable<Uint8Array>, {
              dir,
              ...(signal ? { signal } : {}),
            });
            archive.entries.set(name, { kind: 'file', ...file });
            break;
          }
          case 'symlink':
            entry.resume();
            archive.entries.set(name, { kind: 'link', target: linkTarget(name, header.linkname ?? '') });
            break;
          case 'link':
            entry.resume();
            archive.entries.set(name, { kind: 'link', target: header.linkname ?? '' });
            break;
          case 'directory':
            entry.resume();
            archive.entries.set(name, { kind: 'dir' });
            break;
          default:
            entry.resume();
        }
      }
      await fed;
    } catch (caught) {
      extract.destroy();
      plain.destroy();
      // Our own verdicts (too many entries, a bad entry name) stand.
      const own =
        caught instanceof CapsuleError &&
        !(caught instanceof DataLossError && /^zstd: /.test(caught.message));
      if (own) throw caught;
      // The reader of an entry may only see it torn down ("Stream was destroyed"): the reason is
      // the feed's (decompression) or the parser's.
      const err = feedError ?? parseError ?? caught;
      const e = err as NodeJS.ErrnoException;
      // Aborts and I/O failures (ENOSPC, …) keep their meaning; the rest is a malformed archive
      // or compression stream.
      if (e?.name === 'AbortError' || typeof e?.syscall === 'string') throw err;
      if (err instanceof CapsuleError && !(err instanceof DataLossError && /^zstd: /.test(err.message)))
        throw err;
      throw new DataLossError(tarErrorText(err), { cause: err });
    }
    return archive;
  } catch (err) {
    await archive.remove();
    throw err;
  }
}

/** One image to commit from an archive. */
interface ImageToCommit {
  configFile: SpooledFile;
  /** Layer files, in diffID order. */
  layers: SpooledFile[];
  /** Manifest / index blobs to keep (OCI). */
  manifests: SpooledFile[];
  repoTags: Reference[];
}

export interface LoadResult {
  /** Loaded image ids, in archive order. */
  ids: string[];
  /** Familiar names of the tags set. */
  tags: string[];
}

async function compressionOf(file: SpooledFile): Promise<Compression> {
  const handle = await fs.open(file.path, 'r');
  try {
    const buf = Buffer.alloc(6);
    const { bytesRead } = await handle.read(buf, 0, 6, 0);
    return detectCompression(buf.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/**
 * Commits one image: layers (unpacked unless already there, with "Loading layer" progress), the
 * config, the record, then its tags. Returns the id.
 */
async function commitImage(
  ctx: ServiceContext,
  image: ImageToCommit,
  emit: ((p: LoadProgress) => void) | undefined,
  signal: AbortSignal | undefined,
): Promise<string> {
  const configBytes = await fs.readFile(image.configFile.path);
  const id = image.configFile.digest;
  const config = parseImageConfig(configBytes, id);
  if (config.os !== undefined && config.os !== '' && config.os !== 'linux') {
    throw new InvalidParameterError(`image operating system "${config.os}" cannot be used on this platform`);
  }
  const diffIDs = config.rootfs.diff_ids;
  if (image.layers.length !== diffIDs.length) {
    throw new DataLossError(
      `invalid manifest, layers length mismatch: expected ${image.layers.length}, got ${diffIDs.length}`,
    );
  }
  let size = 0;
  const counted = new Set<string>();
  for (const [i, diffID] of diffIDs.entries()) {
    const file = image.layers[i] as SpooledFile;
    let info = await ctx.layers.get(diffID);
    if (info === undefined) {
      const compression = await compressionOf(file);
      const gzip = compression === 'gzip';
      if (compression === 'none' && file.digest !== diffID) {
        throw new DataLossError(`invalid diffID for layer ${i}: expected "${diffID}", got "${file.digest}"`);
      }
      await ctx.content.commitSpooled(file.path, file.digest);
      const id12 = shortId(diffID);
      const throttle = new ProgressThrottle((current) =>
        emit?.(progressLine('Loading layer', id12, current, file.size)),
      );
      info = await ctx.layers.unpack(diffID, ctx.content.blobPath(file.digest), file.digest, {
        ...(emit ? { onProgress: (current: number) => throttle.update(current, current >= file.size) } : {}),
        ...(signal ? { signal } : {}),
        ...(gzip ? { pushBlob: { digest: file.digest, size: file.size } } : {}),
      });
    }
    if (!counted.has(diffID)) size += info.size;
    counted.add(diffID);
  }
  for (const m of image.manifests) await ctx.content.commitSpooled(m.path, m.digest);
  if (!(await ctx.content.has(id))) await ctx.content.writeBlob(id, configBytes);
  const { retained: _retained, ...existing }: Partial<ImageMeta> = ctx.images.getAnyImage(id) ?? {};
  // Loaded again: visible again, even without a tag (a retained record only hides a removed image).
  await ctx.images.putImage({
    ...existing,
    id,
    diffIDs,
    size,
    ...(image.manifests.length > 0
      ? { manifests: [...new Set([...(existing.manifests ?? []), ...image.manifests.map((m) => m.digest)])] }
      : {}),
    storedAt: existing.storedAt ?? new Date().toISOString(),
  });
  return id;
}

/** Loads a spooled archive: docker-archive when it has manifest.json, else an OCI layout. */
export async function loadSpooled(
  ctx: ServiceContext,
  archive: SpooledArchive,
  quiet: boolean,
  emit: (p: LoadProgress) => void,
  signal?: AbortSignal,
): Promise<LoadResult> {
  if (archive.has('manifest.json')) return loadDockerArchive(ctx, archive, quiet, emit, signal);
  if (archive.has('index.json')) return loadOciLayout(ctx, archive, quiet, emit, signal);
  // dockerd's loader falls back to the legacy "repositories" file and fails opening it.
  throw new InvalidParameterError(
    `open ${path.join(archive.dir, 'repositories')}: no such file or directory`,
  );
}

async function setLoadedTags(
  ctx: ServiceContext,
  id: string,
  tags: Reference[],
  emit: (p: LoadProgress) => void,
  result: LoadResult,
): Promise<void> {
  for (const ref of tags) {
    const key = referenceString(ref);
    const previous = ctx.images.resolveRef(key);
    if (previous !== undefined && previous !== id) {
      emit({
        stream: `The image ${familiarString(ref)} already exists, renaming the old one with ID ${previous} to empty string\n`,
      });
    }
    await ctx.images.setRefs([key], id);
    await ctx.images.updateImage(id, { lastTagTime: new Date().toISOString() });
    emit({ stream: `Loaded image: ${familiarString(ref)}\n` });
    result.tags.push(familiarString(ref));
  }
}

function parseRepoTag(repoTag: unknown): Reference {
  if (typeof repoTag !== 'string') throw new DataLossError(`invalid tag ${JSON.stringify(repoTag)}`);
  const ref = parseNormalizedNamed(repoTag);
  if (ref.tag === undefined || ref.digest !== undefined)
    throw new InvalidParameterError(`invalid tag "${repoTag}"`);
  return ref;
}

async function loadDockerArchive(
  ctx: ServiceContext,
  archive: SpooledArchive,
  quiet: boolean,
  emit: (p: LoadProgress) => void,
  signal?: AbortSignal,
): Promise<LoadResult> {
  const doc = await archive.readJson('manifest.json');
  if (!Array.isArray(doc)) throw new DataLossError('invalid archive: manifest.json is not a list');
  const result: LoadResult = { ids: [], tags: [] };
  let idLines = '';
  let lastTagCount = 0;
  const loaded = new Map<string, string[]>();
  for (const raw of doc as unknown[]) {
    const item = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>;
    if (typeof item.Config !== 'string')
      throw new DataLossError('invalid archive: manifest entry without Config');
    const layerNames = Array.isArray(item.Layers) ? (item.Layers as unknown[]) : [];
    const repoTags = (Array.isArray(item.RepoTags) ? (item.RepoTags as unknown[]) : []).map(parseRepoTag);
    const image: ImageToCommit = {
      configFile: archive.resolve(item.Config),
      layers: layerNames.map((l) => {
        if (typeof l !== 'string') throw new DataLossError('invalid archive: layer path is not a string');
        return archive.resolve(l);
      }),
      manifests: [],
      repoTags,
    };
    const id = await commitImage(ctx, image, quiet ? undefined : emit, signal);
    result.ids.push(id);
    idLines += `Loaded image ID: ${id}\n`;
    const meta = ctx.images.getAnyImage(id);
    if (typeof item.Parent === 'string' && meta !== undefined) {
      const parentLayers = loaded.get(item.Parent);
      if (parentLayers !== undefined && parentLayers.every((d, i) => meta.diffIDs[i] === d)) {
        await ctx.images.updateImage(id, { parent: item.Parent });
      }
    }
    loaded.set(id, meta?.diffIDs ?? []);
    await setLoadedTags(ctx, id, repoTags, emit, result);
    lastTagCount = repoTags.length;
  }
  // dockerd prints the ids of every loaded image only when the last one had no tags.
  if (lastTagCount === 0 && idLines !== '') emit({ stream: idLines });
  return result;
}

function ociName(annotations: Record<string, string> | undefined): Reference | undefined {
  for (const key of ['io.containerd.image.name', 'org.opencontainers.image.ref.name']) {
    const value = annotations?.[key];
    // A bare ref.name ("latest") is only a tag: without a repository there is no name to set.
    if (value === undefined || (key.startsWith('org.') && !/[:/]/.test(value))) continue;
    try {
      const ref = parseNormalizedNamed(value);
      if (ref.tag !== undefined && ref.digest === undefined) return ref;
    } catch {
      // not a reference: no name
    }
  }
  return undefined;
}

async function ociBlob(archive: SpooledArchive, desc: Descriptor): Promise<SpooledFile> {
  const file = archive.resolve(`blobs/sha256/${desc.digest.slice(7)}`);
  if (file.digest !== desc.digest) {
    throw new DataLossError(`invalid archive: blob ${desc.digest} has digest ${file.digest}`);
  }
  if (file.size !== desc.size) {
    throw new DataLossError(
      `invalid archive: blob ${desc.digest} is ${file.size} bytes, its descriptor says ${desc.size}`,
    );
  }
  return file;
}

async function loadOciLayout(
  ctx: ServiceContext,
  archive: SpooledArchive,
  quiet: boolean,
  emit: (p: LoadProgress) => void,
  signal?: AbortSignal,
): Promise<LoadResult> {
  const indexFile = archive.resolve('index.json');
  const index = parseManifest(await fs.readFile(indexFile.path), MediaType.OciIndex);
  if (index.kind !== 'index') throw new DataLossError('invalid archive: index.json is not an image index');
  const platform = parsePlatform(undefined);
  const result: LoadResult = { ids: [], tags: [] };
  let idLines = '';
  let lastTagCount = 0;
  for (const top of index.manifests) {
    const manifests: SpooledFile[] = [];
    let desc: Descriptor = top;
    for (let depth = 0; ; depth++) {
      if (depth > 4) throw new DataLossError('invalid archive: nested indexes too deep');
      const file = await ociBlob(archive, desc);
      manifests.push(file);
      const parsed = parseManifest(await fs.readFile(file.path), desc.mediaType);
      if (parsed.kind === 'manifest') {
        assertImageManifest(parsed);
        const configFile = await ociBlob(archive, parsed.config);
        const layers: SpooledFile[] = [];
        for (const l of parsed.layers) layers.push(await ociBlob(archive, l));
        const name = ociName(top.annotations);
        const image: ImageToCommit = { configFile, layers, manifests, repoTags: name ? [name] : [] };
        const id = await commitImage(ctx, image, quiet ? undefined : emit, signal);
        result.ids.push(id);
        idLines += `Loaded image ID: ${id}\n`;
        await setLoadedTags(ctx, id, image.repoTags, emit, result);
        lastTagCount = image.repoTags.length;
        break;
      }
      desc = selectManifest(parsed, platform);
    }
  }
  if (lastTagCount === 0 && idLines !== '') emit({ stream: idLines });
  return result;
}
