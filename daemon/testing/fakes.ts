/**
 * Fakes of the image service and the sandbox runtime for unit tests (no root, no VM).
 *
 * FakeSandboxRuntime runs a "process" by interpreting a tiny shell: echo, printf, cat, sleep,
 * exit, true, false, env, pwd, hostname, seq, trap '' SIG, `>&2` redirection, `;` and newlines,
 * and `sh` reading commands from stdin. An unknown command fails the start as an OCI runtime
 * does (exit code 127 carried on the error); `noexec` fails with 126.
 */
import { createHash } from 'node:crypto';
import { promises as fsPromises } from 'node:fs';
import * as path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import {
  ConflictError,
  InvalidParameterError,
  NotFoundError,
  UnauthorizedError,
  UnavailableError,
} from '../../common/errdefs';
import * as rootfsArchive from '../../common/rootfs-archive';
import { planCommit, type CommitRequest } from '../../images/commit';
import { archiveErrorToErrdefs } from '../archive';
import type {
  HistoryEntry,
  ImageConfigFile,
  ImageDeleteItem,
  ImageInUse,
  ImageListOptions,
  ImageManagementService,
  ImageRecord,
  ImageRuntimeConfig,
  ImagesDiskUsage,
  ImageSummary,
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
  RemoveOptions as ImageRemoveOptions,
} from '../../images/types';
import type {
  ArchiveInOptions,
  ExecSpec,
  ExitResult,
  GuestPathStat,
  GuestProcess,
  GuestStats,
  RunningExec,
  RunningSandbox,
  RuntimeInfo,
  SandboxRuntime,
  SandboxSpec,
} from '../../runtime/types';

// ---- images ---------------------------------------------------------------------------------------

export interface FakeImageSpec {
  /** "busybox:latest", "127.0.0.1:5000/x:1" … */
  ref: string;
  config?: ImageRuntimeConfig;
  size?: number;
  /** Pull fails with this message after the first progress line (an in-stream error). */
  failMidway?: string;
  /** Pull fails before any progress with this UnauthorizedError text (credentials refused). */
  refuseCredentials?: string;
}

/** "busybox" → "busybox:latest"; "docker.io/library/busybox:1" → "busybox:1". */
export function normalizeFakeRef(ref: string): string {
  let r = ref.replace(/^docker\.io\/library\//, '').replace(/^docker\.io\//, '');
  if (r.startsWith('library/')) r = r.slice('library/'.length);
  if (r.includes('@')) return r;
  const lastSlash = r.lastIndexOf('/');
  return r.slice(lastSlash + 1).includes(':') ? r : `${r}:latest`;
}

function makeImage(spec: FakeImageSpec): ImageRecord {
  const config: ImageConfigFile = {
    architecture: 'amd64',
    os: 'linux',
    created: '2026-11-29T18:21:32.557322944Z',
    config: spec.config ?? { Env: ['PATH=/bin'], Cmd: ['sh'] },
    rootfs: { type: 'layers', diff_ids: [`sha256:${createHash('sha256').update(spec.ref).digest('hex')}`] },
    history: [{ created: '2026-11-29T18:21:32.557322944Z', created_by: 'fake', comment: 'Imported from -' }],
  };
  const id = `sha256:${createHash('sha256').update(JSON.stringify(config)).update(spec.ref).digest('hex')}`;
  return {
    id,
    repoTags: [normalizeFakeRef(spec.ref)],
    repoDigests: [],
    created: config.created ?? '',
    size: spec.size ?? 1982464,
    config,
  };
}

/**
 * A fake of the whole image service. Names live in `local` (normalised name → record), images in
 * `byId`; tag, rmi, prune, push, save/load and import follow dockerd's rules closely enough for
 * the API and CLI tests (the real rules are tested in images/).
 */
export class FakeImageService implements ImageManagementService {
  private readonly local = new Map<string, ImageRecord>();
  private readonly byId = new Map<string, ImageRecord>();
  private readonly registry = new Map<string, FakeImageSpec>();
  readonly pulls: string[] = [];
  /** Pushes seen: the reference pushed (with its tag) and the credentials sent. */
  readonly pushes: Array<{ ref: string; auth?: PushOptions['auth'] }> = [];

  constructor(options: { images?: FakeImageSpec[]; registry?: FakeImageSpec[] } = {}) {
    for (const spec of options.images ?? []) this.add(spec);
    for (const spec of options.registry ?? []) this.registry.set(normalizeFakeRef(spec.ref), spec);
  }

  add(spec: FakeImageSpec): ImageRecord {
    const image = makeImage(spec);
    this.name(normalizeFakeRef(spec.ref), image);
    return image;
  }

  /** Points `ref` at `image`, taking the name from the image it named before. */
  private name(ref: string, image: ImageRecord): void {
    const previous = this.local.get(ref);
    if (previous !== undefined && previous !== image) {
      previous.repoTags = previous.repoTags.filter((t) => t !== ref);
    }
    this.local.set(ref, image);
    this.byId.set(image.id, image);
    if (!image.repoTags.includes(ref)) image.repoTags.push(ref);
  }

  /** Points an existing name at a different image (the tag "moves"). */
  retag(ref: string, config: ImageRuntimeConfig): ImageRecord {
    return this.add({ ref, config: { ...config, Labels: { moved: String(Date.now()) } } });
  }

  async pull(
    reference: string,
    _options: PullOptions,
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord> {
    const ref = normalizeFakeRef(reference);
    this.pulls.push(ref);
    const spec = this.registry.get(ref);
    if (!spec) throw new NotFoundError(`manifest for ${ref} not found: manifest unknown: manifest unknown`);
    if (spec.refuseCredentials) throw new UnauthorizedError(spec.refuseCredentials);
    const repo = ref.slice(0, ref.lastIndexOf(':'));
    const tag = ref.slice(ref.lastIndexOf(':') + 1);
    onProgress({ status: `Pulling from ${repo.includes('/') ? repo : `library/${repo}`}`, id: tag });
    if (spec.failMidway) throw new UnavailableError(spec.failMidway);
    onProgress({ status: 'Pulling fs layer', progressDetail: {}, id: '67fdf85e5cbd' });
    onProgress({ status: 'Downloading', progressDetail: { current: 10, total: 20 }, id: '67fdf85e5cbd' });
    onProgress({ status: 'Pull complete', progressDetail: {}, id: '67fdf85e5cbd' });
    const image = this.add(spec);
    onProgress({ status: `Digest: sha256:${'0'.repeat(64)}` });
    onProgress({ status: `Status: Downloaded newer image for ${ref}` });
    return image;
  }

  async get(reference: string): Promise<ImageRecord> {
    const byName = this.local.get(normalizeFakeRef(reference));
    if (byName) return byName;
    const hex = reference.replace(/^sha256:/, '');
    if (/^[0-9a-f]{4,64}$/.test(hex)) {
      const matches = [...this.byId.values()].filter((i) => i.id.slice(7).startsWith(hex));
      if (matches.length === 1 && matches[0]) return matches[0];
    }
    throw new NotFoundError(`No such image: ${normalizeFakeRef(reference)}`);
  }

  async list(): Promise<ImageRecord[]> {
    return [...new Set(this.local.values())];
  }

  /** Commits seen (the request as the daemon built it). */
  readonly commits: CommitRequest[] = [];

  /** A fake commit: a new image with the container's config and --change applied (no layer). */
  async commit(request: CommitRequest): Promise<ImageRecord> {
    this.commits.push(request);
    const { config } = planCommit(request);
    const ref = request.repository ? `${request.repository}:${request.tag || 'latest'}` : undefined;
    const image = makeImage({ ref: ref ?? `committed-${this.commits.length}`, config });
    if (ref !== undefined) this.name(normalizeFakeRef(ref), image);
    else {
      image.repoTags = [];
      this.byId.set(image.id, image);
    }
    return image;
  }

  async layerDirs(_image: ImageRecord): Promise<string[]> {
    return [];
  }

  // ---- ImageNaming ------------------------------------------------------------------------------

  async tag(source: string, repository: string, tag?: string): Promise<string> {
    const image = await this.get(source);
    if (repository === '') throw new InvalidParameterError('invalid reference format');
    const repo = normalizeFakeRef(repository);
    const base = repo.slice(0, repo.lastIndexOf(':'));
    if (base !== base.toLowerCase()) {
      throw new InvalidParameterError('invalid reference format: repository name must be lowercase');
    }
    const ref = tag ? `${base}:${tag}` : repo;
    this.name(ref, image);
    image.lastTagTime = new Date().toISOString();
    return ref;
  }

  async remove(
    reference: string,
    options: ImageRemoveOptions,
    isInUse: ImageInUse,
  ): Promise<ImageDeleteItem[]> {
    const image = await this.get(reference);
    const short = image.id.slice(7, 19);
    const userOf = (): { id: string; running: boolean } | undefined => {
      const u = isInUse(image.id);
      return typeof u === 'string' ? { id: u, running: false } : u;
    };
    const items: ImageDeleteItem[] = [];
    const byId = image.id.startsWith(reference) || image.id.slice(7).startsWith(reference);
    if (!byId) {
      const ref = normalizeFakeRef(reference);
      const user = userOf();
      if (!options.force && image.repoTags.length === 1 && user !== undefined) {
        throw new ConflictError(
          `conflict: unable to remove repository reference ${JSON.stringify(reference)} (must force) - container ${user.id.slice(0, 12)} is using its referenced image ${short}`,
        );
      }
      this.local.delete(ref);
      image.repoTags = image.repoTags.filter((t) => t !== ref);
      items.push({ untagged: ref });
      // The last name went: the image goes too, unless a container keeps it (forced: a
      // stopped container's image is deleted anyway, as dockerd reports it).
      if (image.repoTags.length > 0 || user?.running || (user !== undefined && !options.force)) {
        return items;
      }
    } else {
      const user = userOf();
      if (user?.running) {
        throw new ConflictError(
          `conflict: unable to delete ${short} (cannot be forced) - image is being used by running container ${user.id.slice(0, 12)}`,
        );
      }
      if (!options.force && image.repoTags.length > 1) {
        throw new ConflictError(
          `conflict: unable to delete ${short} (must be forced) - image is referenced in multiple repositories`,
        );
      }
      if (!options.force && user !== undefined) {
        throw new ConflictError(
          `conflict: unable to delete ${short} (must be forced) - image is being used by stopped container ${user.id.slice(0, 12)}`,
        );
      }
      for (const t of image.repoTags) {
        this.local.delete(t);
        items.push({ untagged: t });
      }
      image.repoTags = [];
    }
    this.byId.delete(image.id);
    items.push({ deleted: image.id });
    return items;
  }

  async prune(options: PruneOptions, isInUse: ImageInUse): Promise<PruneReport> {
    const filters = options.filters ?? {};
    for (const key of Object.keys(filters)) {
      if (!['dangling', 'until', 'label', 'label!'].includes(key)) {
        throw new InvalidParameterError(`Invalid filter '${key}'`);
      }
    }
    const danglingOnly = !(filters.dangling ?? []).some((v) => v === 'false' || v === '0');
    const report: PruneReport = { imagesDeleted: [], spaceReclaimed: 0 };
    for (const image of [...this.byId.values()]) {
      if (isInUse(image.id) !== undefined) continue;
      if (danglingOnly && image.repoTags.length > 0) continue;
      for (const t of image.repoTags) {
        this.local.delete(t);
        report.imagesDeleted.push({ untagged: t });
      }
      image.repoTags = [];
      this.byId.delete(image.id);
      report.imagesDeleted.push({ deleted: image.id });
      report.spaceReclaimed += image.size;
    }
    return report;
  }

  // ---- ImageViews -------------------------------------------------------------------------------

  async listImages(options: ImageListOptions = {}): Promise<ImageSummary[]> {
    const filters = options.filters ?? {};
    for (const key of Object.keys(filters)) {
      if (!['dangling', 'label', 'reference', 'before', 'since'].includes(key)) {
        throw new InvalidParameterError(`Invalid filter '${key}'`);
      }
    }
    const dangling = filters.dangling?.[0];
    if (dangling !== undefined && !['true', 'false', '1', '0'].includes(dangling)) {
      throw new InvalidParameterError(`Invalid filter 'dangling=[${dangling}]'`);
    }
    const out: ImageSummary[] = [];
    for (const image of this.byId.values()) {
      let tags = image.repoTags;
      const refs = filters.reference;
      if (refs !== undefined) {
        const glob = (r: string): RegExp =>
          new RegExp(`^${r.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}$`);
        tags = tags.filter((t) =>
          refs.some((r) => glob(r).test(t) || glob(r).test(t.slice(0, t.lastIndexOf(':')))),
        );
        if (tags.length === 0) continue;
      }
      if ((dangling === 'true' || dangling === '1') && tags.length > 0) continue;
      if ((dangling === 'false' || dangling === '0') && tags.length === 0) continue;
      const labels = image.config.config?.Labels ?? null;
      const wanted = filters.label ?? [];
      if (
        !wanted.every((l) => {
          const eq = l.indexOf('=');
          return eq < 0 ? labels?.[l] !== undefined : labels?.[l.slice(0, eq)] === l.slice(eq + 1);
        })
      ) {
        continue;
      }
      const none = tags.length === 0 && image.repoDigests.length === 0;
      out.push({
        id: image.id,
        parentId: '',
        repoTags: none ? ['<none>:<none>'] : tags.length > 0 ? [...tags] : null,
        repoDigests: none ? ['<none>@<none>'] : image.repoDigests.length > 0 ? [...image.repoDigests] : null,
        created: Math.floor(Date.parse(image.created) / 1000) || 0,
        size: image.size,
        sharedSize: -1,
        virtualSize: image.size,
        labels,
        containers: -1,
      });
    }
    return out.sort((a, b) => b.created - a.created || (a.id < b.id ? -1 : 1));
  }

  async history(reference: string): Promise<HistoryEntry[]> {
    const image = await this.get(reference);
    const entries = (image.config.history ?? []).map((h): HistoryEntry => ({
      id: '<missing>',
      created: Math.floor(Date.parse(h.created ?? '') / 1000) || 0,
      createdBy: h.created_by ?? '',
      tags: null,
      size: h.empty_layer ? 0 : image.size,
      comment: h.comment ?? '',
    }));
    entries.reverse();
    const top = entries[0];
    if (top !== undefined) {
      top.id = image.id;
      top.tags = image.repoTags.length > 0 ? [...image.repoTags] : null;
    }
    return entries;
  }

  async diskUsage(containersUsing: (imageId: string) => number): Promise<ImagesDiskUsage> {
    const images = await this.listImages({ all: true });
    for (const s of images) {
      s.containers = containersUsing(s.id);
      s.sharedSize = 0;
    }
    return { layersSize: images.reduce((n, s) => n + s.size, 0), images };
  }

  // ---- ImageTransfer ----------------------------------------------------------------------------

  async push(reference: string, options: PushOptions, onProgress: (p: PushProgress) => void): Promise<void> {
    const normalized = normalizeFakeRef(reference);
    const repo = normalized.slice(0, normalized.lastIndexOf(':'));
    if (repo !== repo.toLowerCase()) {
      throw new InvalidParameterError('invalid reference format: repository name must be lowercase');
    }
    const tag = options.tag ?? normalized.slice(normalized.lastIndexOf(':') + 1);
    onProgress({ status: `The push refers to repository [${repo}]` });
    const image = this.local.get(`${repo}:${tag}`);
    if (image === undefined) throw new NotFoundError(`tag does not exist: ${repo}:${tag}`);
    this.pushes.push({ ref: `${repo}:${tag}`, ...(options.auth ? { auth: options.auth } : {}) });
    const layer = image.config.rootfs.diff_ids[0]?.slice(7, 19) ?? '000000000000';
    onProgress({ status: 'Preparing', progressDetail: {}, id: layer });
    onProgress({ status: 'Pushing', progressDetail: { current: 10, total: 20 }, id: layer });
    onProgress({ status: 'Pushed', progressDetail: {}, id: layer });
    const digest = `sha256:${createHash('sha256').update(image.id).update(repo).digest('hex')}`;
    onProgress({ status: `${tag}: digest: ${digest} size: 527` });
    onProgress({ progressDetail: {}, aux: { Tag: tag, Digest: digest, Size: 527 } });
    const canonical = `${repo}@${digest}`;
    if (!image.repoDigests.includes(canonical)) image.repoDigests.push(canonical);
    // What was pushed can be pulled back.
    this.registry.set(`${repo}:${tag}`, {
      ref: `${repo}:${tag}`,
      ...(image.config.config ? { config: image.config.config } : {}),
      size: image.size,
    });
  }

  /** A fake archive: JSON of the records (not a tar; only this fake's load reads it). */
  async save(references: string[]): Promise<Readable> {
    const records: ImageRecord[] = [];
    for (const r of references) {
      const image = await this.get(r);
      const named = this.local.get(normalizeFakeRef(r)) === image ? [normalizeFakeRef(r)] : [];
      records.push({ ...image, repoTags: named, repoDigests: [] });
    }
    return Readable.from([Buffer.from(JSON.stringify({ fakeArchive: records }))]);
  }

  async load(
    archive: AsyncIterable<Uint8Array>,
    _options: LoadOptions,
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult> {
    const chunks: Buffer[] = [];
    for await (const chunk of archive) chunks.push(Buffer.from(chunk));
    let records: ImageRecord[];
    try {
      records = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { fakeArchive: ImageRecord[] })
        .fakeArchive;
      if (!Array.isArray(records)) throw new Error('not a fake archive');
    } catch {
      throw new InvalidParameterError('unexpected EOF');
    }
    const result: LoadResult = { ids: [], tags: [] };
    for (const record of records) {
      const image = this.byId.get(record.id) ?? { ...record, repoTags: [], repoDigests: [] };
      this.byId.set(image.id, image);
      result.ids.push(image.id);
      for (const t of record.repoTags) {
        this.name(t, image);
        result.tags.push(t);
        onProgress({ stream: `Loaded image: ${t}\n` });
      }
      if (record.repoTags.length === 0) onProgress({ stream: `Loaded image ID: ${image.id}\n` });
    }
    return result;
  }

  async import(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord> {
    const config: ImageRuntimeConfig = {};
    for (const change of options.changes ?? []) {
      const m = /^\s*(\w+)\s+(.*)$/.exec(change);
      const [, verb = '', arg = ''] = m ?? [];
      if (verb.toUpperCase() === 'CMD')
        config.Cmd = arg.startsWith('[') ? (JSON.parse(arg) as string[]) : ['/bin/sh', '-c', arg];
      else if (verb.toUpperCase() === 'ENV') config.Env = [...(config.Env ?? []), arg.replace(/\s+/, '=')];
      else throw new InvalidParameterError(`${verb.toLowerCase()} is not a valid change command`);
    }
    const hash = createHash('sha256');
    for await (const chunk of tarball) hash.update(chunk);
    const created = new Date().toISOString();
    const image: ImageRecord = {
      id: `sha256:${createHash('sha256').update(hash.digest('hex')).update(created).digest('hex')}`,
      repoTags: [],
      repoDigests: [],
      created,
      size: 1024,
      config: {
        architecture: 'amd64',
        os: 'linux',
        created,
        config,
        rootfs: { type: 'layers', diff_ids: [`sha256:${'1'.repeat(64)}`] },
        history: [{ created, comment: options.message ?? `Imported from ${options.source ?? '-'}` }],
      },
    };
    this.byId.set(image.id, image);
    if (options.repository) {
      const repo = normalizeFakeRef(options.repository);
      this.name(options.tag ? `${repo.slice(0, repo.lastIndexOf(':'))}:${options.tag}` : repo, image);
    }
    return image;
  }
}

// ---- sandboxes ------------------------------------------------------------------------------------

/** An error as the runtime reports a process that could not be started. */
export class FakeStartError extends InvalidParameterError {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

const KNOWN = new Set([
  'echo',
  'printf',
  'cat',
  'sleep',
  'exit',
  'true',
  'false',
  'env',
  'pwd',
  'hostname',
  'seq',
  'trap',
  'sh',
  '/bin/sh',
]);

/** Splits a script into commands at `;` and newlines, outside quotes. */
function splitCommands(script: string): string[] {
  const out: string[] = [];
  let current = '';
  let quote: string | undefined;
  for (const ch of script) {
    if (quote) {
      if (ch === quote) quote = undefined;
      current += ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      current += ch;
    } else if (ch === ';' || ch === '\n') {
      out.push(current);
      current = '';
    } else current += ch;
  }
  out.push(current);
  return out.map((c) => c.trim()).filter((c) => c !== '');
}

function tokenize(command: string): string[] {
  const tokens: string[] = [];
  let current: string | undefined;
  let quote: string | undefined;
  for (const ch of command) {
    if (quote) {
      if (ch === quote) quote = undefined;
      else current = (current ?? '') + ch;
    } else if (ch === "'" || ch === '"') {
      quote = ch;
      current ??= '';
    } else if (ch === ' ' || ch === '\t') {
      if (current !== undefined) tokens.push(current);
      current = undefined;
    } else current = (current ?? '') + ch;
  }
  if (current !== undefined) tokens.push(current);
  return tokens;
}

function unescape(text: string): string {
  return text.replace(/\\n/g, '\n').replace(/\\t/g, '\t').replace(/\\\\/g, '\\');
}

/** `exit N` unwinds the fake shell. */
class ExitRequested extends Error {
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

class Terminated extends Error {
  constructor(readonly exitCode: number) {
    super(`terminated (${exitCode})`);
  }
}

/** Maps the archive engine's errors to errdefs, as the real agent client does for gRPC statuses. */
async function fakeArchiveCall<T>(root: string, fn: () => Promise<T>): Promise<T> {
  try {
    await fsPromises.mkdir(root, { recursive: true });
    return await fn();
  } catch (err) {
    throw archiveErrorToErrdefs(err);
  }
}

export class FakeSandbox implements RunningSandbox {
  readonly output: Readable;
  readonly exited: Promise<ExitResult>;
  /** Resolves with `exited` here: the fake has no teardown between the two. */
  get processExited(): Promise<void> {
    return this.exited.then(() => undefined);
  }
  readonly stdinReceived: Buffer[] = [];
  stdinClosed = false;
  readonly signals: number[] = [];
  private stdinQueue: Buffer[] = [];
  private stdinWake: (() => void) | undefined;
  private readWake: (() => void) | undefined;
  private readonly ignored = new Set<number>();
  private terminate: ((code: number) => void) | undefined;
  private terminatedWith: number | undefined;
  private resolveExit!: (r: ExitResult) => void;
  private done = false;

  constructor(
    readonly spec: SandboxSpec,
    readonly vmPid: number,
  ) {
    this.output = new Readable({
      objectMode: true,
      highWaterMark: 4,
      read: () => {
        const wake = this.readWake;
        this.readWake = undefined;
        wake?.();
      },
    });
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  /**
   * The fake's guest rootfs for cp/export: the container's upper dir alone (no image layers), with
   * the same confined rules as the agent (common/rootfs-archive.ts).
   */
  get fakeRootfs(): string {
    return path.join(this.spec.containerLayerDir, 'upper');
  }

  async statPath(p: string, containerName: string): Promise<GuestPathStat> {
    return fakeArchiveCall(this.fakeRootfs, () => rootfsArchive.statPath(this.fakeRootfs, p, containerName));
  }

  archiveOut(p: string, containerName: string, wholeRootfs: boolean): Readable {
    if (wholeRootfs) return rootfsArchive.exportRootfs(this.fakeRootfs);
    const out = new PassThrough();
    fakeArchiveCall(this.fakeRootfs, () => rootfsArchive.archiveOut(this.fakeRootfs, p, containerName)).then(
      ({ stream }) => stream.pipe(out),
      (err: unknown) => out.destroy(err as Error),
    );
    return out;
  }

  async archiveIn(
    p: string,
    containerName: string,
    tar: AsyncIterable<Uint8Array>,
    options: ArchiveInOptions,
  ): Promise<void> {
    await fakeArchiveCall(this.fakeRootfs, () =>
      rootfsArchive.extractInto(this.fakeRootfs, p, containerName, tar, {
        noOverwriteDirNonDir: options.noOverwriteDirNonDir,
      }),
    );
  }

  /** Runs the process to completion; called by the runtime after start resolved. */
  async run(): Promise<void> {
    let code: number;
    try {
      code = await this.runArgv(this.spec.process.args);
    } catch (err) {
      code = err instanceof Terminated ? err.exitCode : 1;
    }
    await this.finish(this.terminatedWith ?? code);
  }

  private async finish(exitCode: number): Promise<void> {
    if (this.done) return;
    this.done = true;
    this.output.push(null);
    if (!this.output.readableEnded) {
      await new Promise<void>((resolve) => {
        this.output.once('end', resolve);
        this.output.once('close', resolve);
      });
    }
    this.resolveExit({ exitCode, oomKilled: false });
  }

  private checkTerminated(): void {
    if (this.terminatedWith !== undefined) throw new Terminated(this.terminatedWith);
  }

  private async emit(stream: 1 | 2, text: string): Promise<void> {
    this.checkTerminated();
    let data = Buffer.from(text);
    if (this.spec.process.tty) {
      data = Buffer.from(text.replace(/\r?\n/g, '\r\n'));
      stream = 1;
    }
    if (!this.output.push({ stream, data })) {
      await new Promise<void>((resolve) => (this.readWake = resolve));
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.terminate = undefined;
        resolve();
      }, ms);
      this.terminate = (code) => {
        clearTimeout(timer);
        reject(new Terminated(code));
      };
    });
  }

  /** Next stdin chunk, or undefined at EOF. */
  private async readStdin(): Promise<Buffer | undefined> {
    for (;;) {
      this.checkTerminated();
      const chunk = this.stdinQueue.shift();
      if (chunk) return chunk;
      if (this.stdinClosed || !this.spec.process.openStdin) return undefined;
      await new Promise<void>((resolve, reject) => {
        this.stdinWake = resolve;
        this.terminate = (code) => reject(new Terminated(code));
      });
      this.terminate = undefined;
    }
  }

  private async runArgv(argv: string[]): Promise<number> {
    try {
      return await this.execShell(argv);
    } catch (err) {
      if (err instanceof ExitRequested) return err.exitCode;
      throw err;
    }
  }

  private async execShell(argv: string[]): Promise<number> {
    const [cmd, ...args] = argv;
    switch (cmd) {
      case 'sh':
      case '/bin/sh': {
        if (args[0] === '-c') return this.script(args[1] ?? '');
        let status = 0;
        let pending = '';
        for (;;) {
          const chunk = await this.readStdin();
          if (!chunk) break;
          pending += chunk.toString();
          const lines = pending.split('\n');
          pending = lines.pop() ?? '';
          for (const line of lines) status = await this.script(line);
        }
        if (pending.trim()) status = await this.script(pending);
        return status;
      }
      default:
        return this.script(argv.map((a) => (/[\s;]/.test(a) ? `'${a}'` : a)).join(' '));
    }
  }

  private async script(text: string): Promise<number> {
    let status = 0;
    for (const command of splitCommands(text)) {
      let tokens = tokenize(command);
      let stream: 1 | 2 = 1;
      if (tokens[tokens.length - 1] === '>&2') {
        stream = 2;
        tokens = tokens.slice(0, -1);
      }
      const [name, ...args] = tokens;
      switch (name) {
        case undefined:
          break;
        case 'echo':
          await this.emit(stream, `${args.join(' ')}\n`);
          status = 0;
          break;
        case 'printf':
          await this.emit(stream, unescape(args[0] ?? ''));
          status = 0;
          break;
        case 'cat':
          for (;;) {
            const chunk = await this.readStdin();
            if (!chunk) break;
            await this.emit(stream, chunk.toString());
          }
          status = 0;
          break;
        case 'sleep': {
          const arg = args[0] ?? '0';
          await this.sleep(arg === 'infinity' ? 2 ** 31 - 1 : Number(arg) * 1000);
          status = 0;
          break;
        }
        case 'exit':
          throw new ExitRequested(Number(args[0] ?? status));
        case 'true':
          status = 0;
          break;
        case 'false':
          status = 1;
          break;
        case 'env':
          await this.emit(stream, this.spec.process.env.map((e) => `${e}\n`).join(''));
          status = 0;
          break;
        case 'pwd':
          await this.emit(stream, `${this.spec.process.cwd || '/'}\n`);
          break;
        case 'hostname':
          await this.emit(stream, `${this.spec.hostname}\n`);
          break;
        case 'seq': {
          const n = Number(args[0] ?? '0');
          for (let i = 1; i <= n; i++) await this.emit(stream, `${i}\n`);
          status = 0;
          break;
        }
        case 'trap':
          for (const sig of args.slice(1))
            this.ignored.add(sig === 'TERM' ? 15 : sig === 'INT' ? 2 : Number(sig));
          break;
        default:
          await this.emit(2, `sh: ${name}: not found\n`);
          status = 127;
      }
    }
    return status;
  }

  async writeStdin(data: Buffer): Promise<void> {
    if (this.stdinClosed) throw new Error('stdin closed');
    this.stdinReceived.push(Buffer.from(data));
    this.stdinQueue.push(Buffer.from(data));
    const wake = this.stdinWake;
    this.stdinWake = undefined;
    wake?.();
  }

  async closeStdin(): Promise<void> {
    this.stdinClosed = true;
    const wake = this.stdinWake;
    this.stdinWake = undefined;
    wake?.();
  }

  async signal(signo: number): Promise<void> {
    if (this.done) throw new Error('process already exited');
    this.signals.push(signo);
    if (signo !== 9 && this.ignored.has(signo)) return;
    if (signo === 18 || signo === 28 || signo === 17) return; // CONT, WINCH, CHLD: default ignore
    this.kill(128 + signo);
  }

  /** The fake VM's run state: pause()/resume() only record it (the fake process keeps going). */
  paused = false;

  /** Terminal sizes asked for ([rows, cols]), in order. */
  readonly resizes: [number, number][] = [];

  async resize(rows: number, cols: number): Promise<void> {
    this.resizes.push([rows, cols]);
  }

  async pause(): Promise<void> {
    if (this.paused) throw new Error('fake VM already paused');
    this.paused = true;
  }

  async resume(): Promise<void> {
    if (!this.paused) throw new Error('fake VM not paused');
    this.paused = false;
  }

  private kill(code: number): void {
    if (this.terminatedWith !== undefined) return;
    this.terminatedWith = code;
    const terminate = this.terminate;
    this.terminate = undefined;
    terminate?.(code);
    const wake = this.readWake;
    this.readWake = undefined;
    wake?.();
  }

  /** Fake execs run the same fake shell, each in a FakeSandbox of its own sharing this spec. */
  readonly execs: { spec: ExecSpec; process: FakeSandbox }[] = [];
  /** Processes the fake lists for `top` (the init, then its running execs). */
  async top(): Promise<GuestProcess[]> {
    const procs = [{ args: this.spec.process.args, pid: 1 }];
    for (const [i, e] of this.execs.entries()) {
      if (!e.process.done) procs.push({ args: e.spec.args, pid: 100 + i });
    }
    return procs.map((p) => ({
      pid: p.pid,
      ppid: p.pid === 1 ? 0 : 1,
      uid: 0,
      user: 'root',
      startTimeSec: Math.floor(Date.now() / 1000),
      cpuTimeMs: 0,
      elapsedMs: 1000,
      tty: '?',
      cmd: p.args.join(' '),
      comm: (p.args[0] ?? '').split('/').pop()?.slice(0, 15) ?? '',
      state: 'S',
      nice: 0,
      pgid: p.pid,
      sid: p.pid,
      tpgid: -1,
      nlwp: 1,
      vszKb: 2268,
      rssKb: 1440,
      lockedKb: 0,
      memTotalKb: 256 * 1024,
      flags: 0x100,
      priority: 20,
      processor: 0,
      wchan: 'do_wait',
      threads: [],
    }));
  }

  /** Fixed, plausible figures for `stats`. */
  statsCalls = 0;
  async stats(): Promise<GuestStats> {
    this.statsCalls++;
    if (this.done) throw new ConflictError('the container is not running');
    return {
      cpuUsageNs: 1_000_000_000 * this.statsCalls,
      cpuUserNs: 600_000_000 * this.statsCalls,
      cpuSystemNs: 400_000_000 * this.statsCalls,
      throttlingPeriods: 0,
      throttledPeriods: 0,
      throttledTimeNs: 0,
      systemCpuNs: 10_000_000_000 * this.statsCalls,
      onlineCpus: 1,
      memoryUsage: 8 * 1024 * 1024,
      memoryLimit: 256 * 1024 * 1024,
      memoryStat: { anon: 4 * 1024 * 1024, file: 3 * 1024 * 1024, inactive_file: 1024 * 1024 },
      pidsCurrent: 1,
      pidsLimit: 0,
      io: [{ major: 254, minor: 0, op: 'read', value: 4096 }],
      networks: [
        {
          name: 'eth0',
          rxBytes: 1000,
          rxPackets: 10,
          rxErrors: 0,
          rxDropped: 0,
          txBytes: 500,
          txPackets: 5,
          txErrors: 0,
          txDropped: 0,
        },
      ],
      readTimeMs: Date.now(),
    };
  }

  /** How long an exec takes to start (a terminal exec under TCG takes a while). */
  execDelayMs = 0;

  async exec(spec: ExecSpec): Promise<RunningExec> {
    if (this.execDelayMs > 0) await new Promise((r) => setTimeout(r, this.execDelayMs));
    if (this.done) throw new ConflictError(`container ${this.spec.containerId} is not running`);
    const [cmd] = spec.args;
    if (cmd === '/etc/passwd') {
      throw new FakeStartError(
        `OCI runtime exec failed: exec failed: unable to start container process: exec: "${cmd}": permission denied`,
        126,
      );
    }
    if (cmd === undefined || !KNOWN.has(cmd)) {
      throw new FakeStartError(
        `OCI runtime exec failed: exec failed: unable to start container process: exec: "${cmd ?? ''}": executable file not found in $PATH`,
        126,
      );
    }
    const process = new FakeSandbox(
      {
        ...this.spec,
        process: {
          args: spec.args,
          env: spec.env,
          cwd: spec.cwd || this.spec.process.cwd,
          user: spec.user || this.spec.process.user,
          openStdin: spec.openStdin,
          tty: spec.tty,
        },
      },
      this.vmPid,
    );
    this.execs.push({ spec, process });
    setImmediate(() => void process.run());
    return {
      pid: 100 + this.execs.length - 1,
      output: process.output,
      writeStdin: (data) => process.writeStdin(data),
      closeStdin: () => process.closeStdin(),
      signal: (signo) => process.signal(signo),
      resize: (rows, cols) => process.resize(rows, cols),
      exited: process.exited,
    };
  }

  async destroy(): Promise<void> {
    for (const e of this.execs) void e.process.destroy();
    this.kill(137);
    // A destroyed VM produces no more output: whatever is buffered is dropped.
    if (!this.done) {
      this.done = true;
      this.output.push(null);
      this.output.resume();
      this.resolveExit({ exitCode: 137, oomKilled: false });
    }
    await this.exited;
  }
}

export class FakeSandboxRuntime implements SandboxRuntime {
  readonly started: SandboxSpec[] = [];
  readonly sandboxes: FakeSandbox[] = [];
  private nextPid = 40000;
  /** Delay before a start resolves (a VM boot). */
  startDelayMs = 0;

  async start(spec: SandboxSpec): Promise<RunningSandbox> {
    this.started.push(spec);
    if (this.startDelayMs > 0) await new Promise((r) => setTimeout(r, this.startDelayMs));
    const [cmd] = spec.process.args;
    if (cmd === 'noexec' || cmd === '/etc/passwd') {
      throw new FakeStartError(
        `failed to create shim task: OCI runtime create failed: unable to start container process: exec: "${cmd}": permission denied: unknown`,
        126,
      );
    }
    if (cmd === undefined || !KNOWN.has(cmd)) {
      const detail = cmd?.includes('/')
        ? `stat ${cmd}: no such file or directory`
        : `executable file not found in $PATH`;
      throw new FakeStartError(
        `failed to create shim task: OCI runtime create failed: unable to start container process: exec: "${cmd ?? ''}": ${detail}: unknown`,
        127,
      );
    }
    const sandbox = new FakeSandbox(spec, this.nextPid++);
    this.sandboxes.push(sandbox);
    setImmediate(() => void sandbox.run());
    return sandbox;
  }

  info(): RuntimeInfo {
    return { accel: 'tcg', guestKernelRelease: '6.1.0-fake-cloud-amd64', hypervisor: 'fake-qemu 7.2' };
  }

  async shutdown(): Promise<void> {
    await Promise.all(this.sandboxes.map((s) => s.destroy()));
  }

  /** The sandbox of the latest run of a container. */
  latest(containerId: string): FakeSandbox | undefined {
    return [...this.sandboxes].reverse().find((s) => s.spec.containerId === containerId);
  }
}
