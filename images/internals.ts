/**
 * What the image service's operation modules (push, save/load, import) share: the stores, a few
 * lookups, and the gate that keeps garbage collection away from content operations.
 */
import type { Logger } from '../common/logger';
import type { ContentStore } from './content-store';
import type { ImageStore } from './image-store';
import type { LayerStore } from './layer-store';
import type { RegistryClient } from './registry-client';
import type { ImageConfigFile, ImageRecord } from './types';

export interface ServiceContext {
  readonly log: Logger;
  readonly images: ImageStore;
  readonly layers: LayerStore;
  readonly content: ContentStore;
  readonly registry: RegistryClient;
  readonly gate: ContentGate;
  /** The parsed, validated config of a stored image (cached). */
  loadConfig(id: string): Promise<ImageConfigFile>;
  record(id: string): Promise<ImageRecord>;
  /** Serialises read-modify-write of layer records (pushBlob, repositories). */
  layerRecordLock: { run<T>(fn: () => Promise<T>): Promise<T> };
}

/**
 * Content operations (pull, load, import, push, save) run concurrently; garbage collection runs
 * alone. Collection deletes whatever no image references, so it must not overlap an operation
 * that has written content not yet referenced (a pull between download and record) or is reading
 * content (a save streaming layers). When operations are in flight, collection is deferred until
 * the last one ends; operations that start while it runs wait for it.
 */
export class ContentGate {
  private active = 0;
  private running: Promise<void> | undefined;
  private pending: (() => Promise<void>) | undefined;

  constructor(private readonly log: Logger) {}

  /** Enters a content operation; call the returned function exactly once when it ends. */
  async enter(): Promise<() => void> {
    while (this.running !== undefined) await this.running;
    this.active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      if (this.active === 0 && this.pending !== undefined) {
        const gc = this.pending;
        this.pending = undefined;
        this.run(gc).catch((err: unknown) =>
          this.log.warn('deferred image garbage collection failed', { error: (err as Error).message }),
        );
      }
    };
  }

  /** Whether content operations are in flight (collection would be deferred). */
  get busy(): boolean {
    return this.active > 0;
  }

  /**
   * Runs `gc` now if no content operation is in flight (resolves when it is done), otherwise
   * leaves it for when the last one ends (resolves at once; a later request replaces it).
   */
  async collect(gc: () => Promise<void>): Promise<void> {
    await this.run(gc);
  }

  private async run(gc: () => Promise<void>): Promise<void> {
    while (this.running !== undefined) await this.running;
    if (this.active > 0) {
      this.pending = gc;
      return;
    }
    const job = gc();
    this.running = job.then(
      () => undefined,
      () => undefined,
    );
    try {
      await job;
    } finally {
      this.running = undefined;
    }
  }
}

/** "527d2931a77e": the first 12 hex digits of an id, as dockerd prints ids. */
export function shortId(id: string): string {
  const colon = id.indexOf(':');
  return id.slice(colon + 1, colon + 13);
}

/** Unix seconds of an RFC 3339 time (nanoseconds allowed); Go's zero time when absent or invalid. */
export function unixSeconds(time: string | undefined): number {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$/i.exec(time ?? '');
  if (!m) return -62135596800;
  const ms = Date.parse(`${m[1] ?? ''}${(m[2] ?? 'Z').toUpperCase()}`);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : -62135596800;
}

/** Nanoseconds since the epoch of an RFC 3339 time, for exact comparisons; Go's zero time when invalid. */
export function createdNanos(time: string | undefined): bigint {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\d*(Z|[+-]\d\d:\d\d)$/i.exec(time ?? '');
  const seconds = BigInt(unixSeconds(time));
  if (!m) return seconds * 1_000_000_000n;
  return seconds * 1_000_000_000n + BigInt((m[2] ?? '').padEnd(9, '0'));
}

/** RFC 3339 with nanosecond digits as Go prints time.Now().UTC() (ms precision here). */
export function goNow(now: Date = new Date()): string {
  const iso = now.toISOString(); // 2026-01-02T03:04:05.678Z
  const [secs, frac = ''] = iso.slice(0, -1).split('.');
  const trimmed = frac.replace(/0+$/, '');
  return `${secs ?? ''}${trimmed === '' ? '' : `.${trimmed}`}Z`;
}

/** The Go architecture name of this host ("amd64", "arm64"). */
export function goArch(): string {
  const map: Record<string, string> = {
    x64: 'amd64',
    arm64: 'arm64',
    ia32: '386',
    arm: 'arm',
    ppc64: 'ppc64le',
    s390x: 's390x',
  };
  return map[process.arch] ?? process.arch;
}
