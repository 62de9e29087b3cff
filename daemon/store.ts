/**
 * The container store: one directory per container under <dataRoot>/containers/<id>/ holding
 * config.v2.json (written atomically), the writable layer `layer/` and the json-file log.
 *
 * Invariants: every change is persisted under the container's lock and only then published to
 * the in-memory view, so a reader never sees a state that a crash would lose; names are reserved
 * synchronously in the view before anything is written, so two creates cannot take one name.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeJsonAtomic } from '../common/atomic-write';
import { ConflictError, NotFoundError, SystemError } from '../common/errdefs';
import type { Logger } from '../common/logger';
import { isFullId } from './ids';
import type { ContainerRecord } from './types';

const CONFIG_FILE = 'config.v2.json';

/** Serialises async critical sections per key. */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = previous.then(() => mine);
    this.tails.set(key, tail);
    await previous;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

export class ContainerStore {
  private readonly byId = new Map<string, ContainerRecord>();
  /** "/name" → id; includes reservations for containers still being created. */
  private readonly names = new Map<string, string>();
  private readonly locks = new KeyedMutex();

  constructor(
    readonly root: string,
    private readonly log: Logger,
  ) {}

  dirOf(id: string): string {
    return path.join(this.root, id);
  }

  layerDirOf(id: string): string {
    return path.join(this.root, id, 'layer');
  }

  logPathOf(id: string): string {
    return path.join(this.root, id, `${id}-json.log`);
  }

  /** Loads every persisted container; unreadable entries are logged and skipped. */
  async load(): Promise<ContainerRecord[]> {
    await fs.mkdir(this.root, { recursive: true, mode: 0o700 });
    const loaded: ContainerRecord[] = [];
    for (const entry of await fs.readdir(this.root)) {
      if (!isFullId(entry)) continue;
      try {
        const text = await fs.readFile(path.join(this.root, entry, CONFIG_FILE), 'utf8');
        const record = JSON.parse(text) as ContainerRecord;
        if (record.id !== entry) throw new Error('id does not match its directory');
        record.hasBeenManuallyStopped ??= false;
        this.byId.set(record.id, record);
        this.names.set(record.name, record.id);
        loaded.push(record);
      } catch (err) {
        this.log.warn('skipping unreadable container state', { id: entry, error: String(err) });
      }
    }
    return loaded;
  }

  get(id: string): ContainerRecord | undefined {
    return this.byId.get(id);
  }

  all(): ContainerRecord[] {
    return [...this.byId.values()];
  }

  /**
   * dockerd's lookup order: full id, then name, then unique id prefix. Throws NotFound
   * "No such container: x", or dockerd's error for an ambiguous prefix.
   */
  resolve(ref: string): ContainerRecord {
    const exact = this.byId.get(ref);
    if (exact) return exact;
    const byName = this.names.get(ref.startsWith('/') ? ref : `/${ref}`);
    if (byName !== undefined) {
      const record = this.byId.get(byName);
      if (record) return record;
    }
    if (/^[0-9a-f]+$/.test(ref)) {
      const matches = [...this.byId.keys()].filter((id) => id.startsWith(ref));
      if (matches.length > 1) throw new SystemError(`Multiple IDs found with provided prefix: ${ref}`);
      const only = matches[0];
      if (only !== undefined) {
        const record = this.byId.get(only);
        if (record) return record;
      }
    }
    throw new NotFoundError(`No such container: ${ref}`);
  }

  /** Reserves "/name" for `id` or throws dockerd's 409 text. */
  reserveName(name: string, id: string): void {
    const holder = this.names.get(name);
    if (holder !== undefined && holder !== id) {
      throw new ConflictError(
        `Conflict. The container name "${name}" is already in use by container "${holder}". ` +
          'You have to remove (or rename) that container to be able to reuse that name.',
      );
    }
    this.names.set(name, id);
  }

  isNameTaken(name: string): boolean {
    return this.names.has(name);
  }

  releaseName(name: string, id: string): void {
    if (this.names.get(name) === id) this.names.delete(name);
  }

  /**
   * Gives the container `newName` ("/name"): reserves it (409 when taken), persists, then frees the
   * old one. The caller holds the container's lock.
   */
  async renameLocked(id: string, newName: string): Promise<ContainerRecord> {
    const current = this.byId.get(id);
    if (!current) throw new NotFoundError(`No such container: ${id}`);
    const oldName = current.name;
    this.reserveName(newName, id);
    try {
      const renamed = await this.updateLocked(id, (r) => (r.name = newName));
      this.releaseName(oldName, id);
      return renamed;
    } catch (err) {
      this.releaseName(newName, id);
      throw err;
    }
  }

  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(id, fn);
  }

  /** Creates the container's directories and persists its first record. */
  async create(record: ContainerRecord): Promise<void> {
    await this.withLock(record.id, async () => {
      await fs.mkdir(this.layerDirOf(record.id), { recursive: true, mode: 0o700 });
      await writeJsonAtomic(path.join(this.dirOf(record.id), CONFIG_FILE), record);
      this.byId.set(record.id, record);
    });
  }

  /**
   * Applies `mutate` to a copy of the record, persists it, then publishes it. The caller must not
   * already hold the container's lock (use `updateLocked` inside `withLock`).
   */
  update(id: string, mutate: (record: ContainerRecord) => void): Promise<ContainerRecord> {
    return this.withLock(id, () => this.updateLocked(id, mutate));
  }

  /** As `update`, for a caller holding the container's lock. */
  async updateLocked(id: string, mutate: (record: ContainerRecord) => void): Promise<ContainerRecord> {
    const current = this.byId.get(id);
    if (!current) throw new NotFoundError(`No such container: ${id}`);
    const next = structuredClone(current);
    mutate(next);
    await writeJsonAtomic(path.join(this.dirOf(id), CONFIG_FILE), next);
    // Published only now: a removal that raced us wins (the record is gone from the view).
    if (this.byId.has(id)) this.byId.set(id, next);
    return next;
  }

  /** Forgets the container and deletes its directory (log, layer, state). */
  async remove(id: string): Promise<void> {
    const record = this.byId.get(id);
    this.byId.delete(id);
    if (record) this.releaseName(record.name, id);
    await fs.rm(this.dirOf(id), { recursive: true, force: true, maxRetries: 3 });
  }
}
