/**
 * `docker save`: a docker-archive tarball exactly as dockerd 20.10 writes it (image/tarexport):
 *
 *   <config hex>.json           the image config, byte for byte (mtime: image created)
 *   <v1 id>/                    one directory per layer (chain), named by its legacy v1 id
 *   <v1 id>/VERSION             "1.0"
 *   <v1 id>/json                the legacy v1 image JSON (Go-compatible, see go-json.ts)
 *   <v1 id>/layer.tar           the uncompressed layer tar (or a symlink to an earlier copy)
 *   manifest.json               [{"Config","RepoTags","Layers"[,"Parent"]}] (mtime: epoch)
 *   repositories                {"<familiar name>": {"<tag>": "<top v1 id>"}} (only with tags)
 *
 * in the order Go's filepath.Walk visits the directory dockerd builds (names sorted), with the
 * tar headers of pkg/archive (tar-writer.ts). The layer tar is regenerated from the stored blob
 * (gunzipped when needed) and checked against the diffID as it streams; a mismatch fails the
 * stream rather than writing a wrong archive silently.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { DataLossError, InvalidParameterError, NotFoundError } from '../common/errdefs';
import {
  chainIds,
  createV1Id,
  goMarshal,
  goObject,
  goTime,
  v1ImageFields,
  v1ImageOfConfig,
  type V1Image,
} from './go-json';
import type { ServiceContext } from './internals';
import {
  familiarName,
  familiarString,
  fullName,
  parseAnyReference,
  parseNormalizedNamed,
  referenceString,
  tagNameOnly,
  type Reference,
} from './reference';
import { tarStream, type TarEntry } from './tar-writer';
import { decompressors, detectCompression } from './unpack';

export interface SaveTarget {
  id: string;
  /** Tagged references to record for it (RepoTags, repositories). */
  tags: Reference[];
}

/**
 * Resolves `docker save` names as dockerd's tarexporter does: an id saves the image untagged; a
 * bare repository name saves every image of that repository with its tags (or, when the name
 * has no references, the image whose id starts with it); name:tag or name@digest saves that one
 * reference. Errors: NotFoundError "reference does not exist" / "No such image: <name>".
 */
export function resolveSaveTargets(
  ctx: Pick<ServiceContext, 'images'>,
  names: readonly string[],
): SaveTarget[] {
  const targets = new Map<string, SaveTarget>();
  const add = (id: string, ref?: Reference): void => {
    let target = targets.get(id);
    if (target === undefined) {
      target = { id, tags: [] };
      targets.set(id, target);
    }
    if (ref === undefined || ref.digest !== undefined) return;
    const tagged = tagNameOnly(ref);
    if (!target.tags.some((t) => referenceString(t) === referenceString(tagged))) target.tags.push(tagged);
  };
  const searchId = (name: string): string => {
    const hex = name.startsWith('sha256:') ? name.slice(7) : name;
    const ids = /^[a-f0-9]+$/.test(hex) ? ctx.images.searchIds(hex) : [];
    if (ids.length !== 1 || ids[0] === undefined) throw new NotFoundError(`No such image: ${name}`);
    return ids[0];
  };
  for (const name of names) {
    const any = parseAnyReference(name);
    if (any.kind === 'id') {
      if (ctx.images.getImage(any.id) === undefined) throw new NotFoundError(`No such image: ${any.id}`);
      add(any.id);
      continue;
    }
    const ref = any.ref;
    if (familiarName(ref) === 'sha256') {
      add(searchId(name));
      continue;
    }
    if (ref.tag === undefined && ref.digest === undefined) {
      const repo = fullName(ref);
      const assocs = ctx.images.allRefs().filter(([r]) => fullName(parseNormalizedNamed(r)) === repo);
      if (assocs.length === 0) {
        add(searchId(name));
        continue;
      }
      for (const [r, id] of assocs) add(id, parseNormalizedNamed(r));
      continue;
    }
    const key = ref.digest !== undefined ? `${fullName(ref)}@${ref.digest}` : referenceString(ref);
    const id = ctx.images.resolveRef(key);
    if (id === undefined) throw new NotFoundError('reference does not exist');
    add(id, ref);
  }
  return [...targets.values()];
}

interface LayerSource {
  diffID: string;
  blobDigest: string;
  tarSize: number | undefined;
}

/** A stream of the layer tar (the blob decompressed: gzip or zstd), verified against its diffID and size as it goes. */
async function* layerTar(ctx: ServiceContext, source: LayerSource, size: number): AsyncGenerator<Buffer> {
  const head = await ctx.content.readHead(source.blobDigest, 6);
  const raw = ctx.content.openRead(source.blobDigest);
  const [decompress] = decompressors(detectCompression(head));
  const stream: Readable = decompress !== undefined ? (raw.pipe(decompress) as unknown as Readable) : raw;
  raw.once('error', (err) => stream.destroy(err));
  const hash = createHash('sha256');
  let length = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      hash.update(chunk);
      length += chunk.length;
      yield chunk;
    }
  } finally {
    raw.destroy();
    stream.destroy();
  }
  const digest = `sha256:${hash.digest('hex')}`;
  if (digest !== source.diffID || length !== size) {
    throw new DataLossError(
      `layer ${source.diffID} is corrupt in the content store (read ${digest}, ${length} bytes)`,
    );
  }
}

/** The uncompressed length of a layer tar, counting it when the record does not say. */
async function tarSizeOf(ctx: ServiceContext, source: LayerSource): Promise<number> {
  if (source.tarSize !== undefined) return source.tarSize;
  let n = 0;
  for await (const chunk of layerTar(ctx, source, Number.MAX_SAFE_INTEGER)) n += chunk.length;
  return n;
}

/** The header of a layer tar entry whose size is computed only when the entry is reached. */
interface PendingEntry {
  entry: TarEntry | (() => Promise<TarEntry>);
  name: string;
}

function dirName(name: string): string {
  return name.endsWith('/') ? name.slice(0, -1) : name;
}

/**
 * Builds the save stream for resolved targets. The caller has entered the content gate; the
 * returned stream calls `release` once it ends, fails or is destroyed.
 */
export async function saveArchive(
  ctx: ServiceContext,
  targets: SaveTarget[],
  release: () => void,
): Promise<Readable> {
  const now = Math.floor(Date.now() / 1000);
  const topLevel: PendingEntry[][] = [];
  const manifest: Array<Record<string, unknown>> = [];
  const repositories: Record<string, Record<string, string>> = {};
  // dockerd dedupes layer directories by v1 id, and layer tars by diffID (later copies are symlinks).
  const savedV1Ids = new Set<string>();
  const diffIdPaths = new Map<string, string>();
  const saved = new Map<string, string[]>(); // image id → its diffIDs (for Parent links)

  for (const target of targets) {
    const meta = ctx.images.getImage(target.id);
    if (meta === undefined) throw new NotFoundError(`No such image: ${target.id}`);
    const configBytes = await ctx.content.read(target.id);
    const config = (await ctx.loadConfig(target.id)) as unknown as Record<string, unknown>;
    const diffIDs = meta.diffIDs;
    if (diffIDs.length === 0) throw new InvalidParameterError('empty export - not implemented');
    const created = goTime(config.created);
    const createdSeconds = Math.floor(Date.parse(created) / 1000);
    const chains = chainIds(diffIDs);
    const layers: string[] = [];
    let parent = '';
    for (const [i, diffID] of diffIDs.entries()) {
      const isTop = i === diffIDs.length - 1;
      const v1: V1Image = isTop ? v1ImageOfConfig(config) : { created: '1970-01-01T00:00:00Z' };
      const chain = chains[i] as string;
      const v1Id = createV1Id(v1, chain, parent);
      const hex = v1Id.slice(7);
      const layerJson: V1Image = {
        ...v1,
        id: hex,
        ...(parent !== '' ? { parent: parent.slice(7) } : {}),
        os: str(config.os),
      };
      layers.push(`${hex}/layer.tar`);
      parent = v1Id;
      if (savedV1Ids.has(hex)) continue;
      savedV1Ids.add(hex);
      const earlier = diffIdPaths.get(diffID);
      // dockerd sets the times only on layers it writes out, not on symlinked copies.
      const mtime = earlier === undefined ? createdSeconds : now;
      const entries: PendingEntry[] = [
        { name: `${hex}/`, entry: { name: `${hex}/`, type: 'directory', mode: 0o755, mtime } },
        {
          name: `${hex}/VERSION`,
          entry: {
            name: `${hex}/VERSION`,
            type: 'file',
            mode: 0o644,
            mtime,
            size: 3,
            body: Buffer.from('1.0'),
          },
        },
      ];
      const json = Buffer.from(goObject(v1ImageFields(layerJson)), 'utf8');
      entries.push({
        name: `${hex}/json`,
        entry: { name: `${hex}/json`, type: 'file', mode: 0o644, mtime, size: json.length, body: json },
      });
      if (earlier !== undefined) {
        entries.push({
          name: `${hex}/layer.tar`,
          entry: { name: `${hex}/layer.tar`, type: 'symlink', mode: 0o777, mtime, linkname: `../${earlier}` },
        });
      } else {
        diffIdPaths.set(diffID, `${hex}/layer.tar`);
        const info = await ctx.layers.get(diffID);
        if (info?.blobDigest === undefined || !(await ctx.content.has(info.blobDigest))) {
          throw new DataLossError(`layer ${diffID} of image ${target.id} has no stored content`);
        }
        const source: LayerSource = { diffID, blobDigest: info.blobDigest, tarSize: info.tarSize };
        entries.push({
          name: `${hex}/layer.tar`,
          entry: async () => {
            const size = await tarSizeOf(ctx, source);
            return {
              name: `${hex}/layer.tar`,
              type: 'file',
              mode: 0o644,
              mtime,
              size,
              body: () => layerTar(ctx, source, size),
            };
          },
        });
      }
      topLevel.push(entries);
    }
    topLevel.push([
      {
        name: `${target.id.slice(7)}.json`,
        entry: {
          name: `${target.id.slice(7)}.json`,
          type: 'file',
          mode: 0o644,
          mtime: createdSeconds,
          size: configBytes.length,
          body: configBytes,
        },
      },
    ]);
    const repoTags = target.tags.map((t) => familiarString(t));
    for (const t of target.tags) {
      (repositories[familiarName(t)] ??= {})[t.tag ?? 'latest'] = parent.slice(7);
    }
    const item: Record<string, unknown> = {
      Config: `${target.id.slice(7)}.json`,
      RepoTags: repoTags.length > 0 ? repoTags : null,
      Layers: layers,
    };
    if (meta.parent !== undefined) {
      const parentLayers = saved.get(meta.parent);
      if (parentLayers !== undefined && parentLayers.every((d, i) => diffIDs[i] === d))
        item.Parent = meta.parent;
    }
    saved.set(target.id, diffIDs);
    manifest.push(item);
  }

  const manifestJson = Buffer.from(
    `${manifest.length === 0 ? 'null' : `[${manifest.map((m) => manifestItemJson(m)).join(',')}]`}\n`,
    'utf8',
  );
  topLevel.push([
    {
      name: 'manifest.json',
      entry: {
        name: 'manifest.json',
        type: 'file',
        mode: 0o644,
        mtime: 0,
        size: manifestJson.length,
        body: manifestJson,
      },
    },
  ]);
  if (Object.keys(repositories).length > 0) {
    const repos = Buffer.from(`${goMarshal(repositories)}\n`, 'utf8');
    topLevel.push([
      {
        name: 'repositories',
        entry: { name: 'repositories', type: 'file', mode: 0o644, mtime: 0, size: repos.length, body: repos },
      },
    ]);
  }
  // filepath.Walk order: top-level names sorted, each directory's children right after it.
  topLevel.sort((a, b) => compareBytes(dirName(a[0]?.name ?? ''), dirName(b[0]?.name ?? '')));
  const ordered = topLevel.map((group) => [
    ...group.slice(0, 1),
    ...group.slice(1).sort((a, b) => compareBytes(a.name, b.name)),
  ]);

  async function* entries(): AsyncGenerator<TarEntry> {
    for (const group of ordered) {
      for (const pending of group)
        yield typeof pending.entry === 'function' ? await pending.entry() : pending.entry;
    }
  }
  const stream = Readable.from(tarStream(entries()), { objectMode: false });
  let released = false;
  const done = (): void => {
    if (released) return;
    released = true;
    release();
  };
  stream.once('close', done);
  stream.once('end', done);
  stream.once('error', (err) => {
    ctx.log.warn('image save failed while streaming', { error: err.message });
    done();
  });
  return stream;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

function manifestItemJson(item: Record<string, unknown>): string {
  const fields: Array<[string, string]> = [
    ['Config', goMarshal(item.Config)],
    ['RepoTags', goMarshal(item.RepoTags)],
    ['Layers', goMarshal(item.Layers)],
  ];
  if (typeof item.Parent === 'string') fields.push(['Parent', goMarshal(item.Parent)]);
  return goObject(fields);
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
