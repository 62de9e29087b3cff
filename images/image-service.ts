/**
 * The image service: pull from a registry, look images up, list them, hand out their layer
 * directories, and the rest of `docker image …`: tag, remove, prune, history, push, save, load,
 * import, system df. Composes the registry client, the content store (verified blobs), the layer
 * store (layers unpacked once per diffID) and the image store (records and references); push,
 * save/load and import live in their own modules (push.ts, archive-*.ts, import-image.ts).
 *
 * Pull, in dockerd's order and with its progress lines:
 *   1. resolve the manifest (an index is narrowed to the requested platform) — errors here happen
 *      before any progress line, so the API can still answer with a plain error status;
 *   2. "Pulling from <path>" (id: tag or digest);
 *   3. unless the image (by config digest) is already complete: fetch and verify the config, then
 *      per layer "Already exists" or "Pulling fs layer" (+ "Waiting" beyond the download limit),
 *      downloads in parallel ("Downloading" with counts, "Verifying Checksum", "Download
 *      complete"), extraction in layer order ("Extracting", "Pull complete"); concurrent pulls
 *      share each blob download and config fetch, which runs while any of them still waits;
 *   4. the image record is written — only now is the image visible —, then "Digest: …", the
 *      references (tag and repo digest), and "Status: Downloaded newer image for …" or
 *      "Status: Image is up to date for …".
 *
 * Removal follows dockerd's ImageDelete (see remove()): references go first, then the image
 * record, then — by garbage collection — every layer and blob no remaining image references.
 * Collection runs only while no pull, load, import, push or save is in flight (ContentGate), so
 * it never takes content an operation has written but not yet recorded, or is reading.
 */
import type { Readable } from 'node:stream';
import {
  CanceledError,
  CapsuleError,
  ConflictError,
  DataLossError,
  InvalidParameterError,
  NotFoundError,
  UnavailableError,
} from '../common/errdefs';
import type { Logger } from '../common/logger';
import { loadSpooled, spoolArchive } from './archive-load';
import { resolveSaveTargets, saveArchive } from './archive-save';
import { commitImage, planCommit, type CommitRequest, type ImageCommitter } from './commit';
import { ContentStore } from './content-store';
import {
  LIST_FILTERS,
  PRUNE_FILTERS,
  familiarMatch,
  listDangling,
  matchLabels,
  matchPruneLabels,
  parseGlob,
  pruneDanglingOnly,
  pruneUntil,
  validateFilters,
} from './filters';
import { chainIds } from './go-json';
import { parseImageConfig } from './image-config';
import { ImageStore, Mutex, type ImageMeta } from './image-store';
import { importImage, importProgress, openImportUrl, planImport } from './import-image';
import { ContentGate, createdNanos, shortId, unixSeconds, type ServiceContext } from './internals';
import { LayerStore, type LayerInfo } from './layer-store';
import { SharedWork } from './shared-work';
import {
  MAX_MANIFEST_BYTES,
  assertImageManifest,
  parsePlatform,
  selectManifest,
  type Descriptor,
  type ImageManifest,
} from './manifest';
import { layerLine, messageLine, progressLine, ProgressThrottle, shortLayerId } from './progress';
import { pushImage, pushTarget, rememberRepository } from './push';
import {
  familiarName,
  familiarString,
  fullName,
  isValidTag,
  parseAnyReference,
  parseNormalizedNamed,
  pullTarget,
  referenceString,
  tagNameOnly,
  type Reference,
} from './reference';
import { httpGet, RegistryClient, type BlobResponse, type RemoteRepository } from './registry-client';
import { detectCompression } from './unpack';
import type {
  HistoryEntry,
  ImageConfigFile,
  ImageDeleteItem,
  ImageInUse,
  ImageListOptions,
  ImageManagementService,
  ImageRecord,
  ImageSummary,
  ImagesDiskUsage,
  ImportOptions,
  LoadOptions,
  LoadProgress,
  LoadResult,
  PruneOptions,
  PruneReport,
  PullOptions,
  PullProgress,
  PushOptions,
  PushProgress,
  RemoveOptions,
} from './types';

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
  /** How pushes upload layer blobs: 'chunked' (POST, PATCH, PUT — dockerd's way, default) or 'monolithic'. */
  uploadMode?: 'chunked' | 'monolithic';
  /** Wait before retrying a failed upload, ms (default 5 s per attempt, as dockerd). */
  pushRetryDelayMs?: number;
}

/** The service plus the internals tests and the daemon may need. */
export interface CapsuleImageService extends ImageManagementService, ImageCommitter {
  /** Resolves once the stores are loaded (every method waits for it too). */
  ready(): Promise<void>;
  readonly contentStore: ContentStore;
  readonly layerStore: LayerStore;
}

const ZERO_TIME = '0001-01-01T00:00:00Z';
const DOWNLOAD_ATTEMPTS = 3;
/**
 * Layers unpacked at once in a pull: two keep both cores of a small host busy (measured: the pull
 * bench in docs/performance.md); more only adds contention.
 */
const UNPACK_CONCURRENCY = 2;

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

/**
 * The registry session of one pull. Its signal aborts (cancelling its requests) once the pull is
 * gone — its own signal aborted, or it ended — and no shared work it started still runs: a layer
 * download another pull waits for goes on over this session after the pull that started it was
 * cancelled.
 */
class PullSession {
  private readonly controller = new AbortController();
  private leases = 0;
  private gone = false;
  private readonly onOwnerAbort = (): void => this.leave();

  constructor(private readonly owner: AbortSignal | undefined) {
    if (owner?.aborted) this.leave();
    else owner?.addEventListener('abort', this.onOwnerAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Keeps the session open for one shared work; returns its release (idempotent). */
  lease(): () => void {
    this.leases++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.leases--;
      this.closeIfUnused();
    };
  }

  /** The pull is done with the session (cancelled, failed or finished). */
  leave(): void {
    this.owner?.removeEventListener('abort', this.onOwnerAbort);
    this.gone = true;
    this.closeIfUnused();
  }

  private closeIfUnused(): void {
    if (this.gone && this.leases === 0 && !this.controller.signal.aborted) {
      this.controller.abort(new CanceledError('context canceled'));
    }
  }
}

/**
 * `pending`, or a rejection as soon as `signal` aborts; a value that arrives after that is handed
 * to `dispose` (a response nobody will read must not keep its connection open).
 */
function untilAborted<T>(pending: Promise<T>, signal: AbortSignal, dispose: (value: T) => void): Promise<T> {
  if (signal.aborted) {
    pending.then(dispose, () => undefined);
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      pending.then(dispose, () => undefined);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    pending.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) dispose(value);
        else resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

/**
 * Streams a fetched blob into the content store, verified. An abort destroys the response at once
 * (a stalled body would otherwise never reach the store's own abort check), which closes its
 * connection; the store then removes its temp file.
 */
async function ingestBlob(
  store: ContentStore,
  digest: string,
  blob: BlobResponse,
  size: number,
  signal: AbortSignal,
  onBytes?: (current: number) => void,
): Promise<void> {
  const onAbort = (): void => {
    blob.stream.destroy(signal.reason as Error);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await store.ingest(digest, blob.stream, { size, signal, ...(onBytes ? { onBytes } : {}) });
  } catch (err) {
    blob.stream.destroy();
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

export function createImageService(deps: ImageServiceDeps): CapsuleImageService {
  return new ImageServiceImpl(deps);
}

/** Bits of dockerd's conflict mask (daemon/images/image_delete.go). */
const CONFLICT_CHILD = 1;
const CONFLICT_RUNNING = 2;
const CONFLICT_REFERENCE = 4;
const CONFLICT_STOPPED = 8;
const CONFLICT_HARD = CONFLICT_CHILD | CONFLICT_RUNNING;
const CONFLICT_SOFT = CONFLICT_REFERENCE | CONFLICT_STOPPED;

interface DeleteConflict {
  hard: boolean;
  used: boolean;
  message: string;
}

/** What one rmi / prune call accumulates. */
interface DeleteRun {
  records: ImageDeleteItem[];
  isInUse: ImageInUse;
  /** Sizes of the layers reported as deleted, by chain id (prune's SpaceReclaimed). */
  layerSizes: Map<string, number>;
}

class ImageServiceImpl implements CapsuleImageService {
  readonly contentStore: ContentStore;
  readonly layerStore: LayerStore;
  private readonly images: ImageStore;
  private readonly registry: RegistryClient;
  private readonly log: Logger;
  private readonly configs = new Map<string, ImageConfigFile>();
  /** Layer blobs being downloaded, by digest (shared by concurrent pulls). */
  private readonly downloads = new Map<string, SharedWork<void, PullProgress>>();
  /** Config blobs being fetched, by digest (shared by concurrent pulls). */
  private readonly configFetches = new Map<string, SharedWork<void, PullProgress>>();
  private readonly maxDownloads: number;
  private readonly gate: ContentGate;
  /** Serialises removals (and their collection) with one another. */
  private readonly deleteLock = new Mutex();
  private readonly layerRecordLock = new Mutex();
  private pruneRunning = false;
  private readonly ctx: ServiceContext;
  private initialised: Promise<void> | undefined;

  constructor(private readonly deps: ImageServiceDeps) {
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
    this.gate = new ContentGate(this.log);
    this.ctx = {
      log: this.log,
      images: this.images,
      layers: this.layerStore,
      content: this.contentStore,
      registry: this.registry,
      gate: this.gate,
      loadConfig: (id) => this.loadConfig(id),
      record: (id) => this.record(id),
      layerRecordLock: this.layerRecordLock,
    };
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
    // dockerd trims the ":" "pull -a" may leave at the end of the name.
    const named = parseNormalizedNamed(reference.endsWith(':') ? reference.slice(0, -1) : reference);
    const release = await this.gate.enter();
    try {
      if (options.allTags === true && named.tag === undefined && named.digest === undefined) {
        return await this.pullAllTags(named, options, onProgress);
      }
      const target = pullTarget(named);
      const { record, updated } = await this.pullNow(target, options, onProgress);
      this.emitStatus(onProgress, familiarString(target), updated);
      return record;
    } finally {
      release();
    }
  }

  /**
   * `docker pull --all-tags`, as dockerd's pullV2Repository: every tag the registry lists, in its
   * order, each with its own "Pulling from" … "Digest:" lines, then one status line for the
   * repository name ("Downloaded newer image" when any tag brought new layers or a new tag).
   * The first failing tag ends the pull. Returns the image of "latest" when there is one.
   */
  private async pullAllTags(
    named: Reference,
    options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord> {
    const name: Reference = { domain: named.domain, path: named.path };
    const repo = this.registry.repository(name, options.auth, options.signal);
    let tags: string[];
    try {
      tags = await repo.listTags();
    } catch (err) {
      if (options.signal?.aborted) throw new CanceledError('context canceled', { cause: err });
      throw err;
    }
    if (tags.length === 0) throw new NotFoundError(`no tags in repository ${familiarName(name)}`);
    let updated = false;
    let latest: ImageRecord | undefined;
    let last: ImageRecord | undefined;
    for (const tag of tags) {
      const result = await this.pullNow({ ...name, tag }, options, onProgress);
      updated ||= result.updated;
      last = result.record;
      if (tag === 'latest') latest = result.record;
    }
    this.emitStatus(onProgress, familiarString(name), updated);
    return (latest ?? last) as ImageRecord;
  }

  /** dockerd's writeStatus: the last line of a pull. */
  private emitStatus(onProgress: (p: PullProgress) => void, shown: string, updated: boolean): void {
    try {
      onProgress(
        messageLine(`Status: ${updated ? 'Downloaded newer image for' : 'Image is up to date for'} ${shown}`),
      );
    } catch (err) {
      this.log.debug('progress listener failed', { error: (err as Error).message });
    }
  }

  /** Pulls one tag or digest; `updated` is dockerd's "layers downloaded or newly tagged". */
  private async pullNow(
    target: Reference,
    options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<{ record: ImageRecord; updated: boolean }> {
    const platform = parsePlatform(options.platform);
    const emit = (p: PullProgress): void => {
      try {
        onProgress(p);
      } catch (err) {
        this.log.debug('progress listener failed', { error: (err as Error).message });
      }
    };
    const log = this.log.child({ op: 'pull', ref: referenceString(target) });
    const session = new PullSession(options.signal);
    try {
      const repo = this.registry.repository(target, options.auth, session.signal);
      const tagOrDigest = target.digest ?? target.tag ?? 'latest';
      const top = await repo.getManifest(tagOrDigest);
      const manifests: Array<{ digest: string; bytes: Buffer }> = [{ digest: top.digest, bytes: top.bytes }];
      let manifest: ImageManifest;
      if (top.parsed.kind === 'index') {
        // dockerd says "Pulling from" before it looks into a list: a platform missing from it is
        // then an error in the progress stream, after that line, as the CLI shows it.
        emit(messageLine(`Pulling from ${target.path}`, tagOrDigest));
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
      if (top.parsed.kind !== 'index') emit(messageLine(`Pulling from ${target.path}`, tagOrDigest));
      const id = manifest.config.digest;
      if (!(await this.isComplete(id))) {
        const config = await this.fetchConfig(repo, session, manifest.config, options.signal);
        const diffIDs = config.rootfs.diff_ids;
        if (diffIDs.length !== manifest.layers.length) {
          throw new DataLossError(
            `image config ${id} lists ${diffIDs.length} layers, the manifest ${manifest.layers.length}`,
          );
        }
        const sizes = await this.pullLayers(repo, session, manifest.layers, diffIDs, emit, options.signal);
        for (const m of manifests) {
          if (!(await this.contentStore.has(m.digest))) await this.contentStore.writeBlob(m.digest, m.bytes);
        }
        const { retained: _retained, ...previous }: Partial<ImageMeta> = this.images.getAnyImage(id) ?? {};
        const meta: ImageMeta = {
          ...previous,
          id,
          diffIDs,
          size: sizes.reduce((a, b) => a + b, 0),
          manifestDigest: top.digest,
          manifests: [...new Set([...(previous.manifests ?? []), ...manifests.map((m) => m.digest)])],
          storedAt: previous.storedAt ?? new Date().toISOString(),
        };
        await this.images.putImage(meta);
      } else {
        for (const m of manifests) {
          if (!(await this.contentStore.has(m.digest))) await this.contentStore.writeBlob(m.digest, m.bytes);
        }
        const meta = this.images.getAnyImage(id);
        const known = meta?.manifests ?? [];
        if (meta !== undefined && manifests.some((m) => !known.includes(m.digest))) {
          await this.images.updateImage(id, {
            manifests: [...new Set([...known, ...manifests.map((m) => m.digest)])],
          });
        }
      }
      // Like dockerd's v2 metadata: this repository holds these blobs (for push's checks).
      const repository = fullName(target);
      const recorded = this.images.getAnyImage(id)?.diffIDs ?? [];
      for (const [i, desc] of manifest.layers.entries()) {
        const diffID = recorded[i];
        if (diffID === undefined) continue;
        const info = await this.layerStore.get(diffID);
        if (info?.pushBlob?.digest === desc.digest && !(info.repositories ?? []).includes(repository)) {
          await rememberRepository(this.ctx, info.diffID, repository);
        }
      }
      emit(messageLine(`Digest: ${top.digest}`));

      const digestRef = referenceString({ domain: target.domain, path: target.path, digest: top.digest });
      const refs = target.tag !== undefined ? [referenceString(target), digestRef] : [digestRef];
      const [previous] = await this.images.setRefs(refs, id);
      const upToDate = previous === id;
      log.info('pulled', { id, digest: top.digest, upToDate });
      return { record: await this.record(id), updated: !upToDate };
    } catch (err) {
      if (options.signal?.aborted) throw new CanceledError('context canceled', { cause: err });
      throw err;
    } finally {
      session.leave();
    }
  }

  /** An image is complete when it is recorded and all its layers are unpacked. */
  private async isComplete(id: string): Promise<boolean> {
    const meta = this.images.getImage(id);
    if (meta === undefined) return false;
    for (const diffID of meta.diffIDs) if ((await this.layerStore.get(diffID)) === undefined) return false;
    return true;
  }

  private async fetchConfig(
    repo: RemoteRepository,
    session: PullSession,
    desc: Descriptor,
    signal: AbortSignal | undefined,
  ): Promise<ImageConfigFile> {
    if (desc.size > MAX_MANIFEST_BYTES) throw new DataLossError(`image config ${desc.digest} is too large`);
    if (!(await this.contentStore.has(desc.digest))) {
      signal?.throwIfAborted();
      // Concurrent pulls of one image share one fetch of its config, as they share layer downloads.
      const work =
        this.configFetches.get(desc.digest) ??
        this.share(this.configFetches, desc.digest, session, async (workSignal) => {
          const blob = await untilAborted(repo.getBlob(desc.digest), workSignal, (b) => b.stream.destroy());
          await ingestBlob(this.contentStore, desc.digest, blob, desc.size, workSignal);
        });
      await work.join(signal);
    }
    return this.loadConfig(desc.digest);
  }

  /**
   * Starts work that concurrent pulls share (see SharedWork) under `key` in `map`, on the registry
   * session of the pull that starts it (kept open while the work runs; see PullSession).
   */
  private share(
    map: Map<string, SharedWork<void, PullProgress>>,
    key: string,
    session: PullSession,
    run: (signal: AbortSignal, emit: (p: PullProgress) => void) => Promise<void>,
  ): SharedWork<void, PullProgress> {
    const release = session.lease();
    const work: SharedWork<void, PullProgress> = new SharedWork(run, () => {
      // Ended or abandoned: a later pull starts afresh.
      if (map.get(key) === work) map.delete(key);
      release();
    });
    map.set(key, work);
    return work;
  }

  private async loadConfig(id: string): Promise<ImageConfigFile> {
    const cached = this.configs.get(id);
    if (cached !== undefined) return cached;
    const config = parseImageConfig(await this.contentStore.read(id), id);
    this.configs.set(id, config);
    return config;
  }

  /** Downloads (limited, in parallel) and unpacks the layers (see UNPACK_CONCURRENCY); returns their sizes. */
  private async pullLayers(
    repo: RemoteRepository,
    session: PullSession,
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
    const downloads = jobs.map((job) =>
      limiter.run(() => this.download(repo, session, job, emit, controller.signal)),
    );
    downloads.forEach((d) => d.catch(() => undefined));
    // Each layer unpacks as soon as it is downloaded, UNPACK_CONCURRENCY at a time: layer dirs are
    // independent (keyed by diffID; overlay stacks them at run time), and one unpack leaves the
    // main thread idle much of the time (file system round trips, zlib in the thread pool).
    // "Pull complete" still comes in the image's layer order, as dockerd prints it.
    const unpackLimiter = new Semaphore(UNPACK_CONCURRENCY);
    const unpacks = jobs.map((job, n) =>
      (downloads[n] as Promise<void>).then(() =>
        unpackLimiter.run(() => this.unpackLayer(repo, job, emit, controller.signal)),
      ),
    );
    unpacks.forEach((u) => u.catch(() => undefined));
    try {
      for (const [n, job] of jobs.entries()) {
        const info = await unpacks[n];
        emit(layerLine('Pull complete', job.id));
        sizes[job.index] = info?.size ?? 0;
      }
    } catch (err) {
      controller.abort();
      await Promise.allSettled([...downloads, ...unpacks]);
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

  /** Unpacks one downloaded layer blob into the layer store, with "Extracting" progress. */
  private async unpackLayer(
    repo: RemoteRepository,
    job: LayerJob,
    emit: (p: PullProgress) => void,
    signal: AbortSignal,
  ): Promise<LayerInfo> {
    const blobPath = this.contentStore.blobPath(job.desc.digest);
    const total = await this.contentStore.size(job.desc.digest);
    const throttle = new ProgressThrottle((current) =>
      emit(progressLine('Extracting', job.id, current, total)),
    );
    const gzip = detectCompression(await this.contentStore.readHead(job.desc.digest, 6)) === 'gzip';
    const foreign = job.desc.urls !== undefined && job.desc.urls.length > 0;
    return this.layerStore.unpack(job.diffID, blobPath, job.desc.digest, {
      onProgress: (current) => throttle.update(current, current >= total),
      signal,
      ...(foreign
        ? { foreign: { mediaType: job.desc.mediaType, size: total, urls: job.desc.urls ?? [] } }
        : {}),
      ...(gzip ? { pushBlob: { digest: job.desc.digest, size: total }, repository: fullName(repo.ref) } : {}),
    });
  }

  /**
   * Opens a layer blob. A foreign or non-distributable layer (a descriptor with `urls`) comes,
   * as in dockerd 20.10's v2LayerDescriptor.open, from the registry when it has the blob, else
   * from the first of its URLs (http or https) that answers 200. Either way the caller verifies
   * the bytes against the descriptor's digest before they are committed.
   */
  private async openLayerBlob(
    repo: RemoteRepository,
    desc: Descriptor,
    signal: AbortSignal,
  ): Promise<BlobResponse> {
    const urls = desc.urls ?? [];
    let lastError: unknown;
    try {
      return await repo.getBlob(desc.digest);
    } catch (err) {
      if (urls.length === 0 || signal.aborted) throw err;
      lastError = err;
    }
    for (const address of urls) {
      this.log.debug('pulling layer from a foreign URL', { digest: desc.digest, url: address });
      try {
        let url: URL;
        try {
          url = new URL(address);
        } catch {
          throw new InvalidParameterError(`invalid URL ${JSON.stringify(address)} for layer ${desc.digest}`);
        }
        const res = await httpGet(url, signal);
        if (res.statusCode !== 200) {
          res.resume();
          throw new UnavailableError(
            `Get "${url.toString()}": unexpected HTTP status ${res.statusCode ?? 0} ${res.statusMessage ?? ''}`.trimEnd(),
          );
        }
        const length = Number(res.headers['content-length']);
        return {
          stream: res,
          ...(res.headers['content-length'] !== undefined && Number.isSafeInteger(length)
            ? { size: length }
            : {}),
        };
      } catch (err) {
        if (signal.aborted) throw err;
        this.log.debug('foreign layer URL failed', {
          digest: desc.digest,
          url: address,
          error: (err as Error).message,
        });
        lastError = err;
      }
    }
    throw lastError;
  }

  /**
   * One layer blob into the content store, verified; shared with concurrent pulls of it. `signal`
   * is this pull's: when it aborts, this pull stops waiting, and the download stops only if no
   * other pull waits for it.
   */
  private async download(
    repo: RemoteRepository,
    session: PullSession,
    job: LayerJob,
    emit: (p: PullProgress) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const digest = job.desc.digest;
    signal.throwIfAborted();
    const work =
      this.downloads.get(digest) ??
      this.share(this.downloads, digest, session, (workSignal, broadcast) =>
        this.fetchLayer(repo, job, broadcast, workSignal),
      );
    await work.join(signal, emit);
    emit(layerLine('Download complete', job.id));
  }

  /** The shared part of download(): fetch, verify and commit one layer blob, with retries. */
  private async fetchLayer(
    repo: RemoteRepository,
    job: LayerJob,
    emit: (p: PullProgress) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const digest = job.desc.digest;
    if (await this.contentStore.has(digest)) return;
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      try {
        const blob = await untilAborted(this.openLayerBlob(repo, job.desc, signal), signal, (b) =>
          b.stream.destroy(),
        );
        const total = job.desc.size;
        const throttle = new ProgressThrottle((current) =>
          emit(progressLine('Downloading', job.id, current, total)),
        );
        await ingestBlob(this.contentStore, digest, blob, total, signal, (current) =>
          throttle.update(current),
        );
        emit(layerLine('Verifying Checksum', job.id));
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
    const meta = this.images.getAnyImage(image.id);
    const diffIDs = meta?.diffIDs ?? image.config?.rootfs.diff_ids;
    if (diffIDs === undefined) throw new NotFoundError(`No such image: ${image.id}`);
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
    // refsOf is sorted by the full reference, as dockerd's reference store sorts.
    const refs = this.images.refsOf(id).map((r) => familiarString(parseNormalizedNamed(r)));
    return {
      id,
      repoTags: refs.filter((r) => !r.includes('@')),
      repoDigests: refs.filter((r) => r.includes('@')),
      created: typeof config.created === 'string' && config.created !== '' ? config.created : ZERO_TIME,
      size: meta.size,
      config,
      ...(meta.parent !== undefined ? { parent: meta.parent } : {}),
      ...(meta.lastTagTime !== undefined ? { lastTagTime: meta.lastTagTime } : {}),
    };
  }

  // -------------------------------------------------------------------------------------------
  // Tag

  async tag(source: string, repository: string, tag?: string): Promise<string> {
    await this.ready();
    const image = await this.get(source);
    let ref = parseNormalizedNamed(repository);
    if (tag !== undefined && tag !== '') {
      if (!isValidTag(tag)) throw new InvalidParameterError('invalid tag format');
      ref = { domain: ref.domain, path: ref.path, tag };
    }
    if (ref.digest !== undefined) {
      throw new InvalidParameterError('refusing to create a tag with a digest reference');
    }
    ref = tagNameOnly(ref);
    if (familiarName(ref) === 'sha256') {
      throw new InvalidParameterError('refusing to create an ambiguous tag using digest algorithm as name');
    }
    await this.images.setRefs([referenceString(ref)], image.id);
    await this.images.updateImage(image.id, { lastTagTime: new Date().toISOString() });
    this.log.info('tagged', { id: image.id, ref: referenceString(ref) });
    return familiarString(ref);
  }

  // -------------------------------------------------------------------------------------------
  // Remove and prune (dockerd's daemon/images/image_delete.go and image_prune.go)

  async remove(reference: string, options: RemoveOptions, isInUse: ImageInUse): Promise<ImageDeleteItem[]> {
    await this.ready();
    return this.deleteLock.run(async () => {
      const run: DeleteRun = { records: [], isInUse, layerSizes: new Map() };
      try {
        await this.imageDelete(reference, options.force === true, options.noprune !== true, run);
      } finally {
        if (run.records.length > 0) await this.collect(isInUse);
      }
      return run.records;
    });
  }

  async prune(options: PruneOptions, isInUse: ImageInUse): Promise<PruneReport> {
    await this.ready();
    if (this.pruneRunning) throw new ConflictError('a prune operation is already running');
    this.pruneRunning = true;
    try {
      const filters = options.filters ?? {};
      validateFilters(filters, PRUNE_FILTERS);
      const danglingOnly = pruneDanglingOnly(filters);
      const until = pruneUntil(filters);
      return await this.deleteLock.run(async () => {
        const run: DeleteRun = { records: [], isInUse, layerSizes: new Map() };
        const candidates = this.images
          .allImages()
          .filter((m) => !danglingOnly || this.images.children(m.id).length === 0);
        const selected: ImageMeta[] = [];
        for (const meta of candidates) {
          if (this.images.refsOf(meta.id).length === 0 && this.images.children(meta.id).length > 0) continue;
          const config = await this.loadConfig(meta.id);
          if (until !== undefined && createdNanos(config.created) > BigInt(Math.floor(until)) * 1_000_000n)
            continue;
          if (!matchPruneLabels(filters, config.config?.Labels ?? null)) continue;
          selected.push(meta);
        }
        for (const meta of selected) {
          if (this.images.getImage(meta.id) === undefined) continue; // went with an earlier one
          const refs = this.images.refsOf(meta.id);
          const tries: string[] = [];
          if (refs.length > 0) {
            const hasTag = refs.some((r) => !r.includes('@'));
            if (!danglingOnly || !hasTag) tries.push(...refs);
          } else {
            tries.push(meta.id.slice(7));
          }
          for (const ref of tries) {
            // An earlier untag may have taken this reference (a tag takes its repository's digests).
            if (refs.length > 0 && this.images.resolveRef(ref) !== meta.id) continue;
            const before = run.records.length;
            try {
              await this.imageDelete(ref, false, true, run);
            } catch (err) {
              run.records.length = before;
              if (!(err instanceof ConflictError)) {
                this.log.warn('failed to prune image', { ref, error: (err as Error).message });
              }
            }
          }
        }
        if (run.records.length > 0) await this.collect(isInUse);
        let spaceReclaimed = 0;
        for (const item of run.records) {
          if ('deleted' in item) spaceReclaimed += run.layerSizes.get(item.deleted) ?? 0;
        }
        return { imagesDeleted: run.records, spaceReclaimed };
      });
    } finally {
      this.pruneRunning = false;
    }
  }

  /** dockerd's ImageDelete. Caller holds deleteLock. */
  private async imageDelete(
    reference: string,
    force: boolean,
    prune: boolean,
    run: DeleteRun,
  ): Promise<void> {
    const image = await this.get(reference);
    const id = image.id;
    let repoRefs = this.images.refsOf(id);
    let removedRepositoryRef = false;
    if (!isImageIdPrefix(id, reference)) {
      // A name: remove that reference first, if nothing forbids it.
      if (!force && isSingleReference(repoRefs)) {
        const user = userOf(run.isInUse(id));
        if (user !== undefined) {
          throw new ConflictError(
            `conflict: unable to remove repository reference ${JSON.stringify(reference)} (must force) - container ${user.id} is using its referenced image ${shortId(id)}`,
          );
        }
      }
      const parsed = tagNameOnly(parseNormalizedNamed(reference));
      await this.images.deleteRefs([lookupKey(parsed)]);
      run.records.push({ untagged: familiarString(parsed) });
      repoRefs = this.images.refsOf(id);
      if (parsed.digest === undefined) {
        // The repository's last tag went: its digest references go too.
        const repo = fullName(parsed);
        const inRepo = (r: string): boolean => fullName(parseNormalizedNamed(r)) === repo;
        if (!repoRefs.some((r) => !r.includes('@') && inRepo(r))) {
          for (const r of repoRefs.filter((x) => x.includes('@') && inRepo(x))) {
            await this.images.deleteRefs([r]);
            run.records.push({ untagged: familiarString(parseNormalizedNamed(r)) });
          }
          repoRefs = this.images.refsOf(id);
        }
      }
      if (repoRefs.length > 0) return;
      removedRepositoryRef = true;
    } else if (isSingleReference(repoRefs)) {
      // An id, and the image has one name (plus digests of it): that name goes with it.
      const mask = CONFLICT_HARD | (force ? 0 : CONFLICT_SOFT & ~CONFLICT_REFERENCE);
      const conflict = this.deleteConflict(id, mask, run.isInUse);
      if (conflict !== undefined) throw conflictError(id, conflict);
      for (const r of repoRefs) {
        await this.images.deleteRefs([r]);
        run.records.push({ untagged: familiarString(parseNormalizedNamed(r)) });
      }
    }
    await this.imageDeleteHelper(id, force, prune, removedRepositoryRef, run);
  }

  /** dockerd's imageDeleteHelper: the image itself, then (prune) its untagged parents. */
  private async imageDeleteHelper(
    id: string,
    force: boolean,
    prune: boolean,
    quiet: boolean,
    run: DeleteRun,
  ): Promise<void> {
    const meta = this.images.getImage(id);
    if (meta === undefined) return;
    const conflict = this.deleteConflict(id, CONFLICT_HARD | (force ? 0 : CONFLICT_SOFT), run.isInUse);
    if (conflict !== undefined) {
      // Quietly keep an image that is still named or in use; say why for a dangling one.
      if (quiet && (!this.isDangling(id) || conflict.used)) return;
      throw conflictError(id, conflict);
    }
    for (const r of this.images.refsOf(id)) {
      await this.images.deleteRefs([r]);
      run.records.push({ untagged: familiarString(parseNormalizedNamed(r)) });
    }
    await this.deleteImageRecord(meta, run);
    if (prune && meta.parent !== undefined) await this.imageDeleteHelper(meta.parent, false, true, true, run);
  }

  /**
   * Deletes (or, when a container still uses it, retains) an image record and reports its
   * released layer chains, top first — those no remaining image (retained ones included) has.
   */
  private async deleteImageRecord(meta: ImageMeta, run: DeleteRun): Promise<void> {
    if (userOf(run.isInUse(meta.id)) !== undefined) {
      await this.images.updateImage(meta.id, { retained: true });
    } else {
      await this.images.deleteImage(meta.id);
    }
    this.configs.delete(meta.id);
    run.records.push({ deleted: meta.id });
    const remaining = new Set<string>();
    for (const other of this.images.allRecorded()) for (const c of chainIds(other.diffIDs)) remaining.add(c);
    const chains = chainIds(meta.diffIDs);
    for (let i = chains.length - 1; i >= 0; i--) {
      const chain = chains[i] as string;
      if (remaining.has(chain)) break;
      run.records.push({ deleted: chain });
      const info = await this.layerStore.get(meta.diffIDs[i] as string);
      run.layerSizes.set(chain, info?.size ?? 0);
      remaining.add(chain);
    }
  }

  private deleteConflict(id: string, mask: number, isInUse: ImageInUse): DeleteConflict | undefined {
    if (mask & CONFLICT_CHILD && this.images.children(id).length > 0) {
      return { hard: true, used: false, message: 'image has dependent child images' };
    }
    const user = userOf(isInUse(id));
    if (mask & CONFLICT_RUNNING && user?.running) {
      return { hard: true, used: true, message: `image is being used by running container ${user.id}` };
    }
    if (mask & CONFLICT_REFERENCE && this.images.refsOf(id).length > 0) {
      return { hard: false, used: false, message: 'image is referenced in multiple repositories' };
    }
    if (mask & CONFLICT_STOPPED && user !== undefined && !user.running) {
      return { hard: false, used: true, message: `image is being used by stopped container ${user.id}` };
    }
    return undefined;
  }

  private isDangling(id: string): boolean {
    return this.images.refsOf(id).length === 0 && this.images.children(id).length === 0;
  }

  /** Garbage collection now, or after the content operations in flight (see ContentGate). */
  private async collect(isInUse: ImageInUse): Promise<void> {
    await this.gate.collect(() => this.collectGarbage(isInUse));
  }

  /**
   * Deletes retained images no container uses any more, then every layer and blob no image
   * references. Runs with no content operation in flight.
   */
  private async collectGarbage(isInUse: ImageInUse): Promise<void> {
    for (const meta of this.images.allRecorded()) {
      if (meta.retained && userOf(isInUse(meta.id)) === undefined) await this.images.deleteImage(meta.id);
    }
    const liveLayers = new Set<string>();
    const liveBlobs = new Set<string>();
    for (const meta of this.images.allRecorded()) {
      liveBlobs.add(meta.id);
      for (const m of meta.manifests ?? []) liveBlobs.add(m);
      if (meta.manifestDigest !== undefined) liveBlobs.add(meta.manifestDigest);
      for (const d of meta.diffIDs) liveLayers.add(d);
    }
    let layers = 0;
    for (const diffID of await this.layerStore.recordedIds()) {
      if (liveLayers.has(diffID)) {
        const info = await this.layerStore.get(diffID);
        if (info?.blobDigest !== undefined) liveBlobs.add(info.blobDigest);
        if (info?.pushBlob !== undefined) liveBlobs.add(info.pushBlob.digest);
        continue;
      }
      await this.layerStore.delete(diffID);
      layers++;
    }
    let blobs = 0;
    for (const digest of await this.contentStore.list()) {
      if (liveBlobs.has(digest)) continue;
      await this.contentStore.delete(digest);
      blobs++;
    }
    if (layers + blobs > 0) this.log.info('garbage collected', { layers, blobs });
  }

  // -------------------------------------------------------------------------------------------
  // Views: list, history, disk usage

  async listImages(options: ImageListOptions = {}): Promise<ImageSummary[]> {
    await this.ready();
    const filters = options.filters ?? {};
    validateFilters(filters, LIST_FILTERS);
    const dangling = listDangling(filters);
    const patterns = filters.reference?.map((p) => ({ p, tokens: parseGlob(p) }));
    let before: bigint | undefined;
    let since: bigint | undefined;
    for (const value of filters.before ?? []) before = createdNanos((await this.get(value)).created);
    for (const value of filters.since ?? []) since = createdNanos((await this.get(value)).created);
    const out: Array<ImageSummary & { createdNs: bigint }> = [];
    const metas = this.images
      .allImages()
      .filter((m) => dangling !== true || this.images.children(m.id).length === 0);
    for (const meta of metas) {
      const config = await this.loadConfig(meta.id);
      const createdNs = createdNanos(config.created);
      if (before !== undefined && createdNs >= before) continue;
      if (since !== undefined && createdNs <= since) continue;
      const labels = config.config?.Labels ?? null;
      if (
        filters.label !== undefined &&
        (config.config === undefined || !matchLabels(filters.label, labels))
      ) {
        continue;
      }
      let repoTags: string[] | null = null;
      let repoDigests: string[] | null = null;
      for (const r of this.images.refsOf(meta.id)) {
        const ref = parseNormalizedNamed(r);
        const familiar = familiarString(ref);
        if (
          patterns !== undefined &&
          !patterns.some(({ p }) => familiarMatch(p, familiar, familiarName(ref)))
        ) {
          continue;
        }
        if (ref.digest !== undefined) (repoDigests ??= []).push(familiar);
        else (repoTags ??= []).push(familiar);
      }
      if (repoTags === null && repoDigests === null) {
        if (!(options.all === true || this.images.children(meta.id).length === 0)) continue;
        if (dangling === false) continue;
        if (patterns !== undefined) continue;
        repoTags = ['<none>:<none>'];
        repoDigests = ['<none>@<none>'];
      } else if (dangling === true && repoTags !== null) {
        continue;
      }
      out.push({
        id: meta.id,
        parentId: meta.parent ?? '',
        repoTags,
        repoDigests,
        created: unixSeconds(config.created),
        size: meta.size,
        sharedSize: -1,
        virtualSize: meta.size,
        labels: labels ?? null,
        containers: -1,
        createdNs,
      });
    }
    out.sort((a, b) =>
      a.createdNs === b.createdNs ? (a.id < b.id ? -1 : 1) : a.createdNs > b.createdNs ? -1 : 1,
    );
    return out.map(({ createdNs: _createdNs, ...summary }) => summary);
  }

  async history(reference: string): Promise<HistoryEntry[]> {
    await this.ready();
    const image = await this.get(reference);
    const meta = this.images.getImage(image.id);
    const diffIDs = meta?.diffIDs ?? image.config.rootfs.diff_ids;
    const entries: HistoryEntry[] = [];
    let layer = 0;
    for (const h of image.config.history ?? []) {
      let size = 0;
      if (h.empty_layer !== true) {
        const diffID = diffIDs[layer];
        if (diffID === undefined) throw new DataLossError('too many non-empty layers in History section');
        size = (await this.layerStore.get(diffID))?.size ?? 0;
        layer++;
      }
      entries.unshift({
        id: '<missing>',
        created: unixSeconds(h.created),
        createdBy: h.created_by ?? '',
        tags: null,
        size,
        comment: h.comment ?? '',
      });
    }
    // The top entry is the image; going down, parent images fill in while there are any.
    let id: string | undefined = image.id;
    for (const entry of entries) {
      if (id === undefined) break;
      entry.id = id;
      const tags = this.images
        .refsOf(id)
        .filter((r) => !r.includes('@'))
        .map((r) => familiarString(parseNormalizedNamed(r)));
      entry.tags = tags.length > 0 ? tags : null;
      id = this.images.getImage(id)?.parent;
      if (id !== undefined && this.images.getImage(id) === undefined) break;
    }
    return entries;
  }

  async diskUsage(containersUsing: (imageId: string) => number): Promise<ImagesDiskUsage> {
    await this.ready();
    const images = await this.listImages({ all: true });
    const refCount = new Map<string, number>();
    const chainsOf = new Map<string, string[]>();
    for (const summary of images) {
      const chains = chainIds(this.images.getImage(summary.id)?.diffIDs ?? []);
      chainsOf.set(summary.id, chains);
      for (const c of new Set(chains)) refCount.set(c, (refCount.get(c) ?? 0) + 1);
    }
    for (const summary of images) {
      const meta = this.images.getImage(summary.id);
      let shared = 0;
      const chains = chainsOf.get(summary.id) ?? [];
      for (const [i, chain] of chains.entries()) {
        if ((refCount.get(chain) ?? 0) > 1) {
          shared += (await this.layerStore.get(meta?.diffIDs[i] ?? ''))?.size ?? 0;
        }
      }
      summary.sharedSize = shared;
      summary.containers = containersUsing(summary.id);
    }
    let layersSize = 0;
    for (const info of await this.layerStore.all()) layersSize += info.size;
    return { layersSize, images };
  }

  // -------------------------------------------------------------------------------------------
  // Push, save, load, import

  async push(reference: string, options: PushOptions, onProgress: (p: PushProgress) => void): Promise<void> {
    await this.ready();
    const target = pushTarget(reference, options.tag);
    const release = await this.gate.enter();
    const log = this.log.child({ op: 'push', ref: referenceString(target) });
    try {
      await pushImage(
        this.ctx,
        target,
        options,
        {
          ...(this.deps.uploadMode ? { uploadMode: this.deps.uploadMode } : {}),
          ...(this.deps.pushRetryDelayMs !== undefined ? { retryDelayMs: this.deps.pushRetryDelayMs } : {}),
        },
        (p) => {
          try {
            onProgress(p);
          } catch (err) {
            log.debug('progress listener failed', { error: (err as Error).message });
          }
        },
      );
      log.info('pushed');
    } finally {
      release();
    }
  }

  async save(references: string[]): Promise<Readable> {
    await this.ready();
    const release = await this.gate.enter();
    try {
      const targets = resolveSaveTargets(this.ctx, references);
      return await saveArchive(this.ctx, targets, release);
    } catch (err) {
      release();
      throw err;
    }
  }

  async load(
    archive: AsyncIterable<Uint8Array>,
    options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult> {
    await this.ready();
    const release = await this.gate.enter();
    const emit = (p: LoadProgress): void => {
      try {
        onProgress(p);
      } catch (err) {
        this.log.debug('progress listener failed', { error: (err as Error).message });
      }
    };
    try {
      const spooled = await spoolArchive(this.ctx, archive, options.signal);
      try {
        const result = await loadSpooled(this.ctx, spooled, options.quiet !== false, emit, options.signal);
        this.log.info('loaded', { ids: result.ids, tags: result.tags });
        return result;
      } finally {
        await spooled.remove();
      }
    } finally {
      release();
    }
  }

  /** docker commit (images/commit.ts). */
  async commit(request: CommitRequest): Promise<ImageRecord> {
    await this.ready();
    const plan = planCommit(request);
    const release = await this.gate.enter();
    try {
      return await this.record(await commitImage(this.ctx, plan, request));
    } finally {
      release();
    }
  }

  async import(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord> {
    await this.ready();
    const plan = planImport(options);
    let body = tarball;
    let remote: Awaited<ReturnType<typeof openImportUrl>> | undefined;
    if (plan.url !== undefined) {
      // Errors opening the URL come before any progress line (a plain error status).
      remote = await openImportUrl(plan.url, options.signal);
      const emit = (p: PullProgress): void => {
        try {
          options.onProgress?.(p);
        } catch (err) {
          this.log.debug('progress listener failed', { error: (err as Error).message });
        }
      };
      emit(messageLine(`Downloading from ${plan.url}`));
      body = importProgress(remote.body as AsyncIterable<Buffer>, remote.total, emit);
    }
    const release = await this.gate.enter();
    try {
      const id = await importImage(this.ctx, plan, body, options.signal);
      return await this.record(id);
    } finally {
      release();
      // A download cut short (bad tarball, abort) must not keep its connection open.
      remote?.body.destroy();
    }
  }
}

/** dockerd's isImageIDPrefix: the reference is (a prefix of) the id, with or without "sha256:". */
function isImageIdPrefix(id: string, reference: string): boolean {
  return id.startsWith(reference) || id.slice(7).startsWith(reference);
}

/**
 * dockerd's isSingleReference: one name, or one name plus digest references of that same
 * repository (the digests an image was pulled by go with its tag).
 */
function isSingleReference(refs: string[]): boolean {
  if (refs.length <= 1) return refs.length === 1;
  let single: string | undefined;
  const canonicalRepos = new Set<string>();
  for (const r of refs) {
    if (r.includes('@')) canonicalRepos.add(fullName(parseNormalizedNamed(r)));
    else if (single === undefined) single = r;
    else return false;
  }
  const name = fullName(parseNormalizedNamed(single ?? (refs[0] as string)));
  return canonicalRepos.size === 1 && canonicalRepos.has(name);
}

function userOf(user: ReturnType<ImageInUse>): { id: string; running: boolean } | undefined {
  if (user === undefined) return undefined;
  if (typeof user === 'string') return { id: user.slice(0, 12), running: false };
  return { id: user.id.slice(0, 12), running: user.running };
}

function conflictError(id: string, conflict: DeleteConflict): ConflictError {
  return new ConflictError(
    `conflict: unable to delete ${shortId(id)} (${conflict.hard ? 'cannot be forced' : 'must be forced'}) - ${conflict.message}`,
  );
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
