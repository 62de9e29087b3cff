/**
 * The image service: pull from a registry, look images up, list them, and hand out their layer
 * directories. Composes the registry client, the content store (verified blobs), the layer store
 * (layers unpacked once per diffID) and the image store (records and references).
 *
 * Pull, in dockerd's order and with its progress lines:
 *   1. resolve the manifest (an index is narrowed to the requested platform) — errors here happen
 *      before any progress line, so the API can still answer with a plain error status;
 *   2. "Pulling from <path>" (id: tag or digest);
 *   3. unless the image (by config digest) is already complete: fetch and verify the config, then
 *      per layer "Already exists" or "Pulling fs layer" (+ "Waiting" beyond the download limit),
 *      downloads in parallel ("Downloading" with counts, "Verifying Checksum", "Download
 *      complete"), extraction in layer order ("Extracting", "Pull complete");
 *   4. the image record is written — only now is the image visible —, then "Digest: …", the
 *      references (tag and repo digest), and "Status: Downloaded newer image for …" or
 *      "Status: Image is up to date for …".
 */
import {
  CanceledError,
  CapsuleError,
  DataLossError,
  InvalidParameterError,
  NotFoundError,
  UnavailableError,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import { ContentStore } from './content-store';
import { ImageStore, type ImageMeta } from './image-store';
import { LayerStore } from './layer-store';
import {
  MAX_MANIFEST_BYTES,
  assertImageManifest,
  parsePlatform,
  selectManifest,
  type Descriptor,
  type ImageManifest,
} from './manifest';
import { layerLine, messageLine, progressLine, ProgressThrottle, shortLayerId } from './progress';
import {
  familiarString,
  fullName,
  parseAnyReference,
  parseNormalizedNamed,
  pullTarget,
  referenceString,
  tagNameOnly,
  type Reference,
} from './reference';
import { RegistryClient, type RemoteRepository } from './registry-client';
import type { ImageConfigFile, ImageRecord, ImageService, PullOptions, PullProgress } from './types';

export interface ImageServiceDeps {
  /** Data root of the image service (blobs, layers, metadata). */
  root: string;
  log: Logger;
  /** "host[:port]" or IPv4 CIDR: https without verification, then http (dockerd's insecure-registries). */
  insecureRegistries?: string[];
  /** Registry origins tried before Docker Hub for docker.io images (dockerd's registry-mirrors). */
  registryMirrors?: string[];
  /** Parallel layer downloads per pull (dockerd's max-concurrent-downloads); default 3. */
  maxConcurrentDownloads?: number;
}

/** The service plus the internals tests and the daemon may need. */
export interface CapsuleImageService extends ImageService {
  /** Resolves once the stores are loaded (every method waits for it too). */
  ready(): Promise<void>;
  readonly contentStore: ContentStore;
  readonly layerStore: LayerStore;
}

const ZERO_TIME = '0001-01-01T00:00:00Z';
const DOWNLOAD_ATTEMPTS = 3;

class Semaphore {
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

interface LayerJob {
  desc: Descriptor;
  diffID: string;
  id: string;
}

export function createImageService(deps: ImageServiceDeps): CapsuleImageService {
  return new ImageServiceImpl(deps);
}

class ImageServiceImpl implements CapsuleImageService {
  readonly contentStore: ContentStore;
  readonly layerStore: LayerStore;
  private readonly images: ImageStore;
  private readonly registry: RegistryClient;
  private readonly log: Logger;
  private readonly configs = new Map<string, ImageConfigFile>();
  private readonly downloads = new Map<string, Promise<void>>();
  private readonly maxDownloads: number;
  private initialised: Promise<void> | undefined;

  constructor(deps: ImageServiceDeps) {
    this.log = deps.log.child({ component: 'images' });
    this.contentStore = new ContentStore(deps.root);
    this.layerStore = new LayerStore(deps.root, this.log);
    this.images = new ImageStore(deps.root, this.log);
    this.registry = new RegistryClient({
      log: this.log,
      ...(deps.insecureRegistries ? { insecureRegistries: deps.insecureRegistries } : {}),
      ...(deps.registryMirrors ? { mirrors: deps.registryMirrors } : {}),
    });
    this.maxDownloads = Math.max(1, deps.maxConcurrentDownloads ?? 3);
  }

  ready(): Promise<void> {
    this.initialised ??= (async () => {
      await this.contentStore.init();
      await this.layerStore.init();
      await this.images.init();
    })();
    return this.initialised;
  }

  // -------------------------------------------------------------------------------------------
  // Pull

  async pull(
    reference: string,
    options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord> {
    await this.ready();
    const target = pullTarget(parseNormalizedNamed(reference));
    const platform = parsePlatform(options.platform);
    const emit = (p: PullProgress): void => {
      try {
        onProgress(p);
      } catch (err) {
        this.log.debug('progress listener failed', { error: (err as Error).message });
      }
    };
    const log = this.log.child({ op: 'pull', ref: referenceString(target) });
    try {
      const repo = this.registry.repository(target, options.auth, options.signal);
      const tagOrDigest = target.digest ?? target.tag ?? 'latest';
      const top = await repo.getManifest(tagOrDigest);
      const manifests: Array<{ digest: string; bytes: Buffer }> = [{ digest: top.digest, bytes: top.bytes }];
      let manifest: ImageManifest;
      if (top.parsed.kind === 'index') {
        const chosen = selectManifest(top.parsed, platform);
        const sub = await repo.getManifest(chosen.digest);
        if (sub.parsed.kind !== 'manifest') {
          throw new InvalidParameterError(`manifest list entry ${chosen.digest} is not an image manifest`);
        }
        manifests.push({ digest: sub.digest, bytes: sub.bytes });
        manifest = sub.parsed;
      } else {
        manifest = top.parsed;
      }
      assertImageManifest(manifest);

      emit(messageLine(`Pulling from ${target.path}`, tagOrDigest));
      const id = manifest.config.digest;
      if (!(await this.isComplete(id))) {
        const config = await this.fetchConfig(repo, manifest.config);
        const diffIDs = config.rootfs.diff_ids;
        if (diffIDs.length !== manifest.layers.length) {
          throw new DataLossError(
            `image config ${id} lists ${diffIDs.length} layers, the manifest ${manifest.layers.length}`,
          );
        }
        const sizes = await this.pullLayers(repo, manifest.layers, diffIDs, emit, options.signal);
        for (const m of manifests) {
          if (!(await this.contentStore.has(m.digest))) await this.contentStore.writeBlob(m.digest, m.bytes);
        }
        const meta: ImageMeta = {
          id,
          diffIDs,
          size: sizes.reduce((a, b) => a + b, 0),
          manifestDigest: top.digest,
          storedAt: new Date().toISOString(),
        };
        await this.images.putImage(meta);
      }
      emit(messageLine(`Digest: ${top.digest}`));

      const digestRef = referenceString({ domain: target.domain, path: target.path, digest: top.digest });
      const refs = target.tag !== undefined ? [referenceString(target), digestRef] : [digestRef];
      const [previous] = await this.images.setRefs(refs, id);
      const upToDate = previous === id;
      emit(
        messageLine(
          `Status: ${upToDate ? 'Image is up to date for' : 'Downloaded newer image for'} ${familiarString(target)}`,
        ),
      );
      log.info('pulled', { id, digest: top.digest, upToDate });
      return await this.record(id);
    } catch (err) {
      if (options.signal?.aborted) throw new CanceledError('context canceled', { cause: err });
      throw err;
    }
  }

  /** An image is complete when it is recorded and all its layers are unpacked. */
  private async isComplete(id: string): Promise<boolean> {
    const meta = this.images.getImage(id);
    if (meta === undefined) return false;
    for (const diffID of meta.diffIDs) if ((await this.layerStore.get(diffID)) === undefined) return false;
    return true;
  }

  private async fetchConfig(repo: RemoteRepository, desc: Descriptor): Promise<ImageConfigFile> {
    if (desc.size > MAX_MANIFEST_BYTES) throw new DataLossError(`image config ${desc.digest} is too large`);
    if (!(await this.contentStore.has(desc.digest))) {
      const blob = await repo.getBlob(desc.digest);
      await this.contentStore.ingest(desc.digest, blob.stream, { size: desc.size });
    }
    return this.loadConfig(desc.digest);
  }

  private async loadConfig(id: string): Promise<ImageConfigFile> {
    const cached = this.configs.get(id);
    if (cached !== undefined) return cached;
    const bytes = await this.contentStore.read(id);
    let config: ImageConfigFile;
    try {
      config = JSON.parse(bytes.toString('utf8')) as ImageConfigFile;
    } catch {
      throw new DataLossError(`image config ${id} is not valid JSON`);
    }
    const rootfs = (config as { rootfs?: unknown }).rootfs as
      { type?: unknown; diff_ids?: unknown } | undefined;
    if (
      typeof rootfs !== 'object' ||
      rootfs === null ||
      rootfs.type !== 'layers' ||
      !Array.isArray(rootfs.diff_ids) ||
      !rootfs.diff_ids.every((d) => typeof d === 'string' && /^sha256:[a-f0-9]{64}$/.test(d))
    ) {
      throw new DataLossError(`invalid rootfs in image configuration ${id}`);
    }
    this.configs.set(id, config);
    return config;
  }

  /** Downloads (limited, in parallel) and unpacks (in order) the layers; returns their sizes. */
  private async pullLayers(
    repo: RemoteRepository,
    layers: Descriptor[],
    diffIDs: string[],
    emit: (p: PullProgress) => void,
    signal: AbortSignal | undefined,
  ): Promise<number[]> {
    const sizes = new Array<number>(layers.length).fill(0);
    const jobs: Array<LayerJob & { index: number }> = [];
    const seen = new Set<string>();
    for (const [index, desc] of layers.entries()) {
      const diffID = diffIDs[index] as string;
      const existing = await this.layerStore.get(diffID);
      const id = shortLayerId(desc.digest);
      if (existing !== undefined) {
        sizes[index] = existing.size;
        if (!seen.has(diffID)) emit(layerLine('Already exists', id));
        seen.add(diffID);
        continue;
      }
      if (seen.has(diffID)) continue; // the same layer twice in one image: unpacked once
      seen.add(diffID);
      jobs.push({ desc, diffID, id, index });
    }
    if (jobs.length === 0) return sizes;

    const controller = new AbortController();
    const onAbort = (): void => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const limiter = new Semaphore(this.maxDownloads);
    for (const [n, job] of jobs.entries()) {
      emit(layerLine('Pulling fs layer', job.id));
      if (n >= this.maxDownloads) emit(layerLine('Waiting', job.id));
    }
    const downloads = jobs.map((job) => limiter.run(() => this.download(repo, job, emit, controller.signal)));
    downloads.forEach((d) => d.catch(() => undefined));
    try {
      for (const [n, job] of jobs.entries()) {
        await downloads[n];
        const blobPath = this.contentStore.blobPath(job.desc.digest);
        const total = await this.contentStore.size(job.desc.digest);
        const throttle = new ProgressThrottle((current) =>
          emit(progressLine('Extracting', job.id, current, total)),
        );
        const info = await this.layerStore.unpack(job.diffID, blobPath, job.desc.digest, {
          onProgress: (current) => throttle.update(current, current >= total),
          signal: controller.signal,
        });
        emit(layerLine('Pull complete', job.id));
        sizes[job.index] = info.size;
      }
    } catch (err) {
      controller.abort();
      await Promise.allSettled(downloads);
      throw err;
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    // Layers repeated in the image take the size of their first occurrence.
    for (const [index] of layers.entries()) {
      if (sizes[index] === 0) {
        const info = await this.layerStore.get(diffIDs[index] as string);
        sizes[index] = info?.size ?? 0;
      }
    }
    return dedupeSizes(sizes, diffIDs);
  }

  /** One layer blob into the content store, verified; shared with a concurrent pull of it. */
  private async download(
    repo: RemoteRepository,
    job: LayerJob,
    emit: (p: PullProgress) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const digest = job.desc.digest;
    const running = this.downloads.get(digest);
    if (running !== undefined) {
      await running;
      emit(layerLine('Download complete', job.id));
      return;
    }
    const work = (async () => {
      if (await this.contentStore.has(digest)) {
        emit(layerLine('Download complete', job.id));
        return;
      }
      for (let attempt = 1; ; attempt++) {
        signal.throwIfAborted();
        try {
          const blob = await repo.getBlob(digest);
          const total = job.desc.size;
          const throttle = new ProgressThrottle((current) =>
            emit(progressLine('Downloading', job.id, current, total)),
          );
          try {
            await this.contentStore.ingest(digest, blob.stream, {
              size: total,
              signal,
              onBytes: (current) => throttle.update(current),
            });
          } catch (err) {
            blob.stream.destroy();
            throw err;
          }
          emit(layerLine('Verifying Checksum', job.id));
          emit(layerLine('Download complete', job.id));
          return;
        } catch (err) {
          if (signal.aborted) throw err;
          if (err instanceof DataLossError) {
            throw new DataLossError(`filesystem layer verification failed for digest ${digest}`, {
              cause: err,
            });
          }
          const retryable = err instanceof UnavailableError || !(err instanceof CapsuleError);
          if (!retryable || attempt >= DOWNLOAD_ATTEMPTS) {
            if (err instanceof CapsuleError) throw err;
            throw new UnavailableError(`error pulling layer ${digest}: ${(err as Error).message}`, {
              cause: err,
            });
          }
          const seconds = attempt * 2;
          this.log.warn('layer download failed, retrying', {
            digest,
            attempt,
            error: (err as Error).message,
          });
          emit(layerLine(`Retrying in ${seconds} second${seconds === 1 ? '' : 's'}`, job.id));
          await sleep(seconds * 1000, signal);
        }
      }
    })();
    this.downloads.set(digest, work);
    try {
      await work;
    } finally {
      this.downloads.delete(digest);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Lookups

  async get(reference: string): Promise<ImageRecord> {
    await this.ready();
    const any = parseAnyReference(reference);
    if (any.kind === 'id') {
      if (this.images.getImage(any.id) !== undefined) return this.record(any.id);
      throw new NotFoundError(`No such image: ${any.id}`);
    }
    const named = tagNameOnly(any.ref);
    const byRef = this.images.resolveRef(lookupKey(named));
    if (byRef !== undefined) return this.record(byRef);
    // dockerd then searches ids by prefix with the string as given ("527d29", "sha256:527d29").
    const term = reference.startsWith('sha256:') ? reference.slice(7) : reference;
    if (/^[a-f0-9]+$/.test(term)) {
      const ids = this.images.searchIds(term);
      if (ids.length === 1 && ids[0] !== undefined) return this.record(ids[0]);
    }
    throw new NotFoundError(`No such image: ${familiarString(named)}`);
  }

  async list(): Promise<ImageRecord[]> {
    await this.ready();
    const records = await Promise.all(this.images.allImages().map((m) => this.record(m.id)));
    return records.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
  }

  async layerDirs(image: ImageRecord): Promise<string[]> {
    await this.ready();
    const meta = this.images.getImage(image.id);
    const diffIDs = meta?.diffIDs ?? image.config.rootfs.diff_ids;
    const dirs: string[] = [];
    for (const diffID of diffIDs) {
      const info = await this.layerStore.get(diffID);
      if (info === undefined) throw new DataLossError(`layer ${diffID} of image ${image.id} is missing`);
      dirs.push(info.dir);
    }
    return dirs;
  }

  private async record(id: string): Promise<ImageRecord> {
    const meta = this.images.getImage(id);
    if (meta === undefined) throw new NotFoundError(`No such image: ${id}`);
    const config = await this.loadConfig(id);
    const refs = this.images.refsOf(id).map((r) => familiarString(parseNormalizedNamed(r)));
    const sorted = refs.sort();
    return {
      id,
      repoTags: sorted.filter((r) => !r.includes('@')),
      repoDigests: sorted.filter((r) => r.includes('@')),
      created: typeof config.created === 'string' && config.created !== '' ? config.created : ZERO_TIME,
      size: meta.size,
      config,
    };
  }
}

/** The key a named reference is stored under ("docker.io/library/busybox:latest"). */
function lookupKey(ref: Reference): string {
  if (ref.digest !== undefined) return `${fullName(ref)}@${ref.digest}`;
  return referenceString(ref);
}

/** Sizes per manifest layer; a layer repeated later counts once toward the image size. */
function dedupeSizes(sizes: number[], diffIDs: string[]): number[] {
  const seen = new Set<string>();
  return sizes.map((s, i) => {
    const d = diffIDs[i] as string;
    if (seen.has(d)) return 0;
    seen.add(d);
    return s;
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
