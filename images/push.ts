/**
 * `docker push`, in dockerd 20.10's order and with its progress lines:
 *
 *   1. "The push refers to repository [<full name>]" — before anything can fail on the registry;
 *   2. the tags to push: the one asked for ("tag does not exist: …"), or every tag of the
 *      repository ("An image does not exist locally with the tag: …");
 *   3. per tag, every layer (top first) "Preparing", "Waiting" beyond the 5 concurrent uploads,
 *      then "Layer already exists" (pushed earlier in this push, or HEAD says the registry has
 *      it), "Mounted from <repo>" (a cross-repository mount on the same registry, for layers
 *      known to be in another repository there), or "Pushing" with progress and "Pushed";
 *   4. the config blob (HEAD, then a monolithic upload), a Docker schema2 manifest (dockerd's
 *      3-space JSON layout) PUT under the tag, "<tag>: digest: sha256:… size: N" and the aux
 *      record; the manifest digest becomes a repo digest of the image.
 *
 * Foreign layers (pulled from a descriptor with `urls`) are not uploaded: "Skipped foreign layer",
 * and their descriptor goes in the manifest with its URLs, as dockerd does without
 * allow-nondistributable-artifacts.
 *
 * Layers are pushed as gzip blobs: the pulled blob when it is gzip (so digests survive a pull /
 * push round trip), otherwise a gzip made once from the stored layer tar and kept in the content
 * store. Which repositories hold a layer's blob is recorded on the layer, like dockerd's v2
 * metadata, for later existence checks and mounts.
 */
import { PassThrough, pipeline } from 'node:stream';
import * as zlib from 'node:zlib';
import {
  CanceledError,
  CapsuleError,
  DataLossError,
  InvalidParameterError,
  NotFoundError,
  UnavailableError,
} from '../common/errdefs';
import type { ServiceContext } from './internals';
import { shortId } from './internals';
import { MediaType } from './manifest';
import { layerLine, messageLine, progressLine, ProgressThrottle } from './progress';
import {
  familiarName,
  familiarString,
  fullName,
  parseNormalizedNamed,
  referenceString,
  type Reference,
} from './reference';
import type { RemoteRepository } from './registry-client';
import { decompressors, detectCompression } from './unpack';
import type { PushOptions, PushProgress } from './types';

/** dockerd's max-concurrent-uploads default. */
const MAX_CONCURRENT_UPLOADS = 5;
const UPLOAD_ATTEMPTS = 3;
const MAX_KNOWN_REPOSITORIES = 16;

export interface PushSettings {
  /** How layer blobs are uploaded (see RemoteRepository.uploadBlob); default chunked, as dockerd. */
  uploadMode?: 'chunked' | 'monolithic';
  /** Delay before retrying a failed upload, in ms per attempt (tests shorten it). */
  retryDelayMs?: number;
}

interface LayerDescriptor {
  mediaType: string;
  size: number;
  digest: string;
  /** A foreign layer's URLs (kept in the manifest; the blob is not uploaded). */
  urls?: string[];
}

class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

/** Parses the push target: a named reference, its tag replaced by `options.tag` when given. */
export function pushTarget(reference: string, tag: string | undefined): Reference {
  const ref = parseNormalizedNamed(reference);
  if (tag !== undefined && tag !== '') {
    return parseNormalizedNamed(`${fullName(ref)}:${tag}`);
  }
  if (ref.digest !== undefined) throw new InvalidParameterError('cannot push a digest reference');
  return ref;
}

export async function pushImage(
  ctx: ServiceContext,
  target: Reference,
  options: PushOptions,
  settings: PushSettings,
  emit: (p: PushProgress) => void,
): Promise<void> {
  const repoName = fullName(target);
  emit(messageLine(`The push refers to repository [${repoName}]`));
  const tags: Array<{ ref: Reference; id: string }> = [];
  if (target.tag !== undefined) {
    const id = ctx.images.resolveRef(referenceString(target));
    if (id === undefined) throw new NotFoundError(`tag does not exist: ${familiarString(target)}`);
    tags.push({ ref: target, id });
  } else {
    for (const [r, id] of ctx.images.allRefs()) {
      const ref = parseNormalizedNamed(r);
      if (fullName(ref) === repoName && ref.tag !== undefined && ref.digest === undefined)
        tags.push({ ref, id });
    }
    if (tags.length === 0) {
      throw new NotFoundError(`An image does not exist locally with the tag: ${familiarName(target)}`);
    }
  }

  const controller = new AbortController();
  const onAbort = (): void => controller.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const repo = ctx.registry.repository(
    { domain: target.domain, path: target.path },
    options.auth,
    controller.signal,
    'pull,push',
  );
  try {
    await repo.preparePush();
    const pushed = new Map<string, LayerDescriptor>();
    for (const { ref, id } of tags) {
      await pushTag(ctx, repo, ref, id, pushed, settings, emit, controller);
    }
  } catch (err) {
    if (options.signal?.aborted) throw new CanceledError('context canceled', { cause: err });
    throw err;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
}

async function pushTag(
  ctx: ServiceContext,
  repo: RemoteRepository,
  ref: Reference,
  id: string,
  pushed: Map<string, LayerDescriptor>,
  settings: PushSettings,
  emit: (p: PushProgress) => void,
  controller: AbortController,
): Promise<void> {
  const meta = ctx.images.getImage(id);
  if (meta === undefined) throw new NotFoundError(`No such image: ${id}`);
  const diffIDs = meta.diffIDs;
  const unique = [...new Set(diffIDs)];
  const topFirst = [...unique].reverse();
  for (const diffID of topFirst) emit(layerLine('Preparing', shortId(diffID)));
  topFirst.slice(MAX_CONCURRENT_UPLOADS).forEach((d) => emit(layerLine('Waiting', shortId(d))));
  const limiter = new Limiter(MAX_CONCURRENT_UPLOADS);
  const jobs = new Map<string, Promise<LayerDescriptor>>();
  for (const diffID of topFirst) {
    jobs.set(
      diffID,
      limiter.run(() => pushLayer(ctx, repo, diffID, pushed, settings, emit, controller.signal)),
    );
  }
  const all = [...jobs.values()];
  all.forEach((j) => j.catch(() => undefined));
  try {
    await Promise.all(all);
  } catch (err) {
    controller.abort();
    await Promise.allSettled(all);
    throw err;
  }
  const layers: LayerDescriptor[] = [];
  for (const diffID of diffIDs) layers.push(await (jobs.get(diffID) as Promise<LayerDescriptor>));

  const config = await ctx.content.read(id);
  if (!(await repo.blobExists(id))) {
    await repo.uploadBlob(id, config.length, () => ctx.content.openRead(id), { mode: 'monolithic' });
  }
  const manifest = {
    schemaVersion: 2,
    mediaType: MediaType.DockerManifest,
    config: { mediaType: MediaType.DockerConfig, size: config.length, digest: id },
    layers: layers.map((l) => ({
      mediaType: l.mediaType,
      size: l.size,
      digest: l.digest,
      ...(l.urls !== undefined ? { urls: l.urls } : {}),
    })),
  };
  // dockerd's schema2 manifest: json.MarshalIndent with three spaces, no trailing newline.
  const bytes = Buffer.from(JSON.stringify(manifest, null, 3), 'utf8');
  const tag = ref.tag ?? 'latest';
  const digest = await repo.putManifest(tag, MediaType.DockerManifest, bytes);
  emit(messageLine(`${tag}: digest: ${digest} size: ${bytes.length}`));
  emit({ progressDetail: {}, aux: { Tag: tag, Digest: digest, Size: bytes.length } });
  await ctx.images.setRefs([`${fullName(ref)}@${digest}`], id);
}

async function pushLayer(
  ctx: ServiceContext,
  repo: RemoteRepository,
  diffID: string,
  pushed: Map<string, LayerDescriptor>,
  settings: PushSettings,
  emit: (p: PushProgress) => void,
  signal: AbortSignal,
): Promise<LayerDescriptor> {
  const id = shortId(diffID);
  const done = pushed.get(diffID);
  if (done !== undefined) {
    emit(layerLine('Layer already exists', id));
    return done;
  }
  // A foreign layer is not uploaded: its descriptor, with its URLs, goes in the manifest as it
  // came (dockerd without allow-nondistributable-artifacts).
  const info = await ctx.layers.get(diffID);
  if (info?.foreign !== undefined && info.blobDigest !== undefined && info.foreign.urls.length > 0) {
    const descriptor: LayerDescriptor = {
      mediaType: info.foreign.mediaType,
      size: info.foreign.size,
      digest: info.blobDigest,
      urls: info.foreign.urls,
    };
    emit(layerLine('Skipped foreign layer', id));
    pushed.set(diffID, descriptor);
    return descriptor;
  }
  const blob = await ensurePushBlob(ctx, diffID);
  const descriptor: LayerDescriptor = {
    mediaType: MediaType.DockerLayerGzip,
    size: blob.size,
    digest: blob.digest,
  };
  const repoName = fullName(repo.ref);
  const finish = async (status: string): Promise<LayerDescriptor> => {
    emit(layerLine(status, id));
    pushed.set(diffID, descriptor);
    await rememberRepository(ctx, diffID, repoName);
    return descriptor;
  };
  if (await repo.blobExists(blob.digest)) return finish('Layer already exists');

  let location: string | undefined;
  for (const source of blob.repositories) {
    const from = parseNormalizedNamed(source);
    if (from.domain !== repo.ref.domain || from.path === repo.ref.path) continue;
    const mount = await repo.mountBlob(blob.digest, from.path);
    if (mount.mounted) return finish(`Mounted from ${from.path}`);
    if (mount.location !== undefined) location = mount.location;
    break;
  }

  for (let attempt = 1; ; attempt++) {
    signal.throwIfAborted();
    const throttle = new ProgressThrottle((sent) => emit(progressLine('Pushing', id, sent, blob.size)));
    try {
      await repo.uploadBlob(blob.digest, blob.size, () => ctx.content.openRead(blob.digest), {
        mode: settings.uploadMode ?? 'chunked',
        onBytes: (sent) => throttle.update(sent, sent >= blob.size),
        ...(location !== undefined ? { location } : {}),
      });
      return await finish('Pushed');
    } catch (err) {
      location = undefined;
      if (signal.aborted) throw err;
      const retryable = err instanceof UnavailableError || !(err instanceof CapsuleError);
      if (!retryable || attempt >= UPLOAD_ATTEMPTS) throw err;
      const seconds = attempt * 5;
      ctx.log.warn('layer upload failed, retrying', { diffID, attempt, error: (err as Error).message });
      emit(layerLine(`Retrying in ${seconds} seconds`, id));
      await new Promise((resolve) => setTimeout(resolve, settings.retryDelayMs ?? seconds * 1000));
    }
  }
}

interface PushableBlob {
  digest: string;
  size: number;
  repositories: string[];
}

/** The layer's gzip blob, made (once) from its stored tar when the stored blob is not gzip. */
async function ensurePushBlob(ctx: ServiceContext, diffID: string): Promise<PushableBlob> {
  return ctx.layerRecordLock.run(async () => {
    const info = await ctx.layers.get(diffID);
    if (info === undefined) throw new DataLossError(`layer ${diffID} is missing`);
    const repositories = info.repositories ?? [];
    if (info.pushBlob !== undefined && (await ctx.content.has(info.pushBlob.digest))) {
      return { ...info.pushBlob, repositories };
    }
    const source = info.blobDigest;
    if (source === undefined || !(await ctx.content.has(source))) {
      throw new DataLossError(`layer ${diffID} has no stored content to push`);
    }
    const compression = detectCompression(await ctx.content.readHead(source, 6));
    let pushBlob: { digest: string; size: number };
    if (compression === 'gzip') {
      pushBlob = { digest: source, size: await ctx.content.size(source) };
    } else {
      // A plain tar (loaded or imported) or a zstd blob: (re)compressed once as gzip, as dockerd
      // pushes every layer it did not pull as gzip.
      const gz = new PassThrough();
      pipeline(
        [ctx.content.openRead(source), ...decompressors(compression), zlib.createGzip({ level: 6 }), gz],
        (err) => {
          if (err) gz.destroy(err);
        },
      );
      pushBlob = await ctx.content.ingestComputed(gz as AsyncIterable<Buffer>);
    }
    await ctx.layers.update(diffID, (record) => ({ ...record, pushBlob }));
    return { ...pushBlob, repositories: info.pushBlob?.digest === pushBlob.digest ? repositories : [] };
  });
}

/** Records that `repository` ("127.0.0.1:5000/bb") holds the layer's push blob. */
export async function rememberRepository(
  ctx: ServiceContext,
  diffID: string,
  repository: string,
): Promise<void> {
  await ctx.layerRecordLock.run(() =>
    ctx.layers.update(diffID, (record) => {
      const known = (record.repositories ?? []).filter((r) => r !== repository);
      return { ...record, repositories: [repository, ...known].slice(0, MAX_KNOWN_REPOSITORIES) };
    }),
  );
}
