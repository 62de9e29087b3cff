/**
 * The daemon's image operations: the image service's calls, plus what only the daemon knows —
 * which containers use an image (rmi's and prune's conflicts, `system df`'s counts), registry
 * login with the daemon's registry settings — and the image events dockerd logs for each
 * operation (`docker events --filter type=image`):
 *
 *   tag     Actor.ID image id, name = the new reference ("127.0.0.1:5000/bb:v1")
 *   untag   Actor.ID image id, name = image id (one per tag removed, and per digest reference
 *           removed by name; the digest references a tag takes with it log none, as dockerd)
 *   delete  Actor.ID image id, name = image id (images only, not their layers)
 *   pull    Actor.ID "busybox:latest", name "busybox"
 *   push    Actor.ID "127.0.0.1:5000/bb:v1", name "127.0.0.1:5000/bb" (per tag pushed)
 *   save, load, import   Actor.ID image id, name = image id (import after a tag event)
 *   prune   Actor.ID "", reclaimed = bytes (API 1.42+ dockerd logs it; older clients ignore it)
 */
import type { Readable } from 'node:stream';
import type { Logger } from '../common/logger';
import { familiarName, familiarString, parseNormalizedNamed, tagNameOnly } from '../images/reference';
import type {
  FilterArgs,
  HistoryEntry,
  ImageDeleteItem,
  ImageListOptions,
  ImageManagementService,
  ImageRecord,
  ImagesDiskUsage,
  ImageSummary,
  ImportOptions,
  LoadOptions,
  LoadProgress,
  LoadResult,
  PruneReport,
  PullOptions,
  PullProgress,
  PushOptions,
  PushProgress,
  RegistryAuth,
  RemoveOptions as ImageRemoveOptions,
} from '../images/types';
import type { EventsBus } from './events';
import { containersPerImage, imageInUse, type ContainerSource } from './image-usage';
import type { LoginResult } from './login-images';
import type { ContainerView } from './types';

export type {
  HistoryEntry,
  ImageDeleteItem,
  ImageListOptions,
  ImageSummary,
  ImagesDiskUsage,
  ImportOptions,
  LoadProgress,
  LoadResult,
  PruneReport,
  PushProgress,
  ImageRemoveOptions,
};
export type { LoginResult };

export interface DaemonImagesDeps {
  images: ImageManagementService;
  events: EventsBus;
  containers: ContainerSource;
  login: (auth: RegistryAuth, signal?: AbortSignal) => Promise<LoginResult>;
  log: Logger;
}

/** The reference shown in pull and push events: familiar, with the default tag. */
function eventRef(reference: string, allTags = false): { id: string; name: string } | undefined {
  try {
    const named = parseNormalizedNamed(reference.endsWith(':') ? reference.slice(0, -1) : reference);
    // `docker pull -a`: dockerd names the repository alone.
    if (allTags && named.tag === undefined && named.digest === undefined) {
      return { id: familiarName(named), name: familiarName(named) };
    }
    const ref = tagNameOnly(named);
    return { id: familiarString(ref), name: familiarName(ref) };
  } catch {
    return undefined;
  }
}

export class DaemonImages {
  constructor(private readonly deps: DaemonImagesDeps) {}

  private get images(): ImageManagementService {
    return this.deps.images;
  }

  private publish(action: string, id: string, name = id): void {
    this.deps.events.publish('image', action, { id, attributes: { name } });
  }

  async pull(
    reference: string,
    options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord> {
    const image = await this.images.pull(reference, options, onProgress);
    const ref = eventRef(reference, options.allTags === true);
    this.publish('pull', ref?.id ?? reference, ref?.name ?? reference);
    return image;
  }

  list(options: ImageListOptions): Promise<ImageSummary[]> {
    return this.images.listImages(options);
  }

  inspect(reference: string): Promise<ImageRecord> {
    return this.images.get(reference);
  }

  history(reference: string): Promise<HistoryEntry[]> {
    return this.images.history(reference);
  }

  async tag(source: string, repository: string, tag?: string): Promise<string> {
    const tagged = await this.images.tag(source, repository, tag);
    const image = await this.images.get(tagged).catch(() => undefined);
    if (image !== undefined) this.publish('tag', image.id, tagged);
    return tagged;
  }

  async remove(reference: string, options: ImageRemoveOptions): Promise<ImageDeleteItem[]> {
    const before = await this.snapshot();
    const items = await this.images.remove(reference, options, imageInUse(this.deps.containers));
    this.publishDeletes(items, before, reference.includes('@') ? reference : undefined);
    return items;
  }

  async prune(filters: FilterArgs): Promise<PruneReport> {
    const before = await this.snapshot();
    const report = await this.images.prune({ filters }, imageInUse(this.deps.containers));
    this.publishDeletes(report.imagesDeleted, before, undefined);
    this.deps.events.publish('image', 'prune', {
      id: '',
      attributes: { reclaimed: String(report.spaceReclaimed) },
    });
    return report;
  }

  async push(reference: string, options: PushOptions, onProgress: (p: PushProgress) => void): Promise<void> {
    const pushed: string[] = [];
    await this.images.push(reference, options, (p) => {
      if ('aux' in p) pushed.push(p.aux.Tag);
      onProgress(p);
    });
    const ref = eventRef(reference);
    for (const tag of pushed) {
      if (ref !== undefined) this.publish('push', `${ref.name}:${tag}`, ref.name);
    }
  }

  /** The archive stream; "save" events follow once the client has read all of it. */
  async save(references: string[]): Promise<Readable> {
    const stream = await this.images.save(references);
    const ids = new Set<string>();
    for (const r of references) {
      const image = await this.images.get(r).catch(() => undefined);
      if (image !== undefined) ids.add(image.id);
    }
    stream.once('end', () => {
      for (const id of ids) this.publish('save', id);
    });
    return stream;
  }

  async load(
    archive: AsyncIterable<Uint8Array>,
    options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult> {
    const result = await this.images.load(archive, options, onProgress);
    for (const id of new Set(result.ids)) this.publish('load', id);
    return result;
  }

  async import(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord> {
    const image = await this.images.import(tarball, options);
    if (options.repository !== undefined && options.repository !== '') {
      try {
        let ref = parseNormalizedNamed(options.repository);
        if (options.tag) ref = { domain: ref.domain, path: ref.path, tag: options.tag };
        this.publish('tag', image.id, familiarString(tagNameOnly(ref)));
      } catch {
        // the service accepted it; nothing to report if we cannot name it
      }
    }
    this.publish('import', image.id);
    return image;
  }

  diskUsage(): Promise<ImagesDiskUsage> {
    return this.images.diskUsage(containersPerImage(this.deps.containers));
  }

  login(auth: RegistryAuth, signal?: AbortSignal): Promise<LoginResult> {
    return this.deps.login(auth, signal);
  }

  /** Which image every familiar reference names, and every image id, before a removal. */
  private async snapshot(): Promise<{ refs: Map<string, string>; ids: Set<string> }> {
    const refs = new Map<string, string>();
    const ids = new Set<string>();
    const summaries = await this.images.listImages({ all: true }).catch((err: unknown) => {
      this.deps.log.debug('image snapshot for events failed', { error: (err as Error).message });
      return [];
    });
    for (const s of summaries) {
      ids.add(s.id);
      for (const r of [...(s.repoTags ?? []), ...(s.repoDigests ?? [])]) {
        if (!r.startsWith('<none>')) refs.set(r, s.id);
      }
    }
    return { refs, ids };
  }

  /** untag and delete events for an rmi / prune answer (see the module comment). */
  private publishDeletes(
    items: ImageDeleteItem[],
    before: { refs: Map<string, string>; ids: Set<string> },
    digestRequested: string | undefined,
  ): void {
    let digestLogged = false;
    for (const item of items) {
      if ('untagged' in item) {
        const isDigest = item.untagged.includes('@');
        if (isDigest && (digestRequested === undefined || digestLogged)) continue;
        if (isDigest) digestLogged = true;
        const id = before.refs.get(item.untagged);
        if (id !== undefined) this.publish('untag', id);
      } else if (before.ids.has(item.deleted)) {
        this.publish('delete', item.deleted);
      }
    }
  }
}

/** Which parts `GET /system/df` asks for (API 1.42+ `type=`; all of them otherwise). */
export interface DiskUsageOptions {
  containers: boolean;
  images: boolean;
  volumes: boolean;
  buildCache: boolean;
}

/** dockerd's DiskUsage, in the daemon's terms; a part not asked for is null. */
export interface DiskUsage {
  layersSize: number;
  images: ImageSummary[] | null;
  containers: ContainerView[] | null;
  /** Capsule has no volumes yet: [] when asked for. */
  volumes: unknown[] | null;
}
