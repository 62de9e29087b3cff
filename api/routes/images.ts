/**
 * Image routes: pull (one tag, or all tags without `tag`) and import (from the body or a URL)
 * (POST /images/create), list, inspect, history, tag, rmi, prune,
 * push, save (GET /images/get, /images/{name}/get) and load. Image names may contain "/" and ":"
 * unescaped in the path (`/images/127.0.0.1:5000/bb:v1/json`, `/images/127.0.0.1:5000/bb/push`):
 * routes use a catch-all parameter. Handlers parse, make one backend call and write; statuses
 * and texts come from the backend's errors.
 */
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { Router, type Request, type Response } from 'express';
import { InvalidParameterError, SystemError, UnauthorizedError } from '../../common/errdefs';
import type {
  HistoryEntry,
  ImageDeleteItem,
  ImageListOptions,
  ImageRemoveOptions,
  ImageSummary,
  ImportOptions,
  LoadProgress,
  LoadResult,
  PruneReport,
  PushProgress,
} from '../../daemon/daemon-images';
import type { FilterArgs, ImageRecord, PullProgress, RegistryAuth } from '../../daemon/types';
import { sendJson } from '../errors';
import { parseFilters, queryBool, queryBoolOr, queryString } from '../query';
import { readRequestBody } from '../streams/hijack';
import { jsonProgress, type JsonProgressStream } from '../streams/json-progress';
import { STORAGE_DRIVER } from '../types/system';
import { toDeleteItem, toHistoryItem, toImageInspect, toImageSummary, toPruneReport } from '../types/images';
import { versionAtLeast } from '../version';

export interface ImagesBackend {
  imagePull(
    reference: string,
    options: { auth?: RegistryAuth; platform?: string; allTags?: boolean; signal?: AbortSignal },
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord>;
  imageList(options: ImageListOptions): Promise<ImageSummary[]>;
  imageInspect(reference: string): Promise<ImageRecord>;
  imageHistory(reference: string): Promise<HistoryEntry[]>;
  imageTag(source: string, repository: string, tag?: string): Promise<string>;
  imageRemove(reference: string, options: ImageRemoveOptions): Promise<ImageDeleteItem[]>;
  imagePrune(filters: FilterArgs): Promise<PruneReport>;
  imagePush(
    reference: string,
    options: { auth?: RegistryAuth; tag?: string; signal?: AbortSignal },
    onProgress: (p: PushProgress) => void,
  ): Promise<void>;
  imageSave(references: string[]): Promise<Readable>;
  imageLoad(
    archive: AsyncIterable<Uint8Array>,
    options: { quiet: boolean; signal?: AbortSignal },
    onProgress: (p: LoadProgress) => void,
  ): Promise<LoadResult>;
  imageImport(tarball: AsyncIterable<Uint8Array>, options: ImportOptions): Promise<ImageRecord>;
}

/** Decoded auth JSON: the fields of dockerd's AuthConfig we use; `auth` is base64 "user:pass". */
export function toRegistryAuth(json: unknown): RegistryAuth | undefined {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return undefined;
  const o = json as Record<string, unknown>;
  const out: RegistryAuth = {};
  for (const key of ['username', 'password', 'identitytoken', 'registrytoken', 'serveraddress'] as const) {
    const value = o[key];
    if (typeof value === 'string' && value !== '') out[key] = value;
  }
  if (out.username === undefined && typeof o.auth === 'string' && o.auth !== '') {
    const plain = Buffer.from(o.auth, 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon > 0) {
      out.username = plain.slice(0, colon);
      out.password = plain.slice(colon + 1);
    }
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

/** X-Registry-Auth: base64url(JSON); "e30=" ({}) and garbage mean no credentials (as dockerd). */
export function decodeRegistryAuth(header: string | undefined): RegistryAuth | undefined {
  if (!header) return undefined;
  try {
    return toRegistryAuth(JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as unknown);
  } catch {
    return undefined;
  }
}

/**
 * Push credentials as dockerd reads them: the X-Registry-Auth header, or — only when there is
 * no header — a JSON AuthConfig body; neither is 400 "Bad parameters and missing
 * X-Registry-Auth: EOF".
 */
async function pushAuth(req: Request): Promise<RegistryAuth | undefined> {
  const header = req.headers['x-registry-auth'];
  if (typeof header === 'string' && header !== '') return decodeRegistryAuth(header);
  const body = (await readRequestBody(req)).toString('utf8');
  if (body.trim() === '') throw new InvalidParameterError('Bad parameters and missing X-Registry-Auth: EOF');
  try {
    return toRegistryAuth(JSON.parse(body) as unknown);
  } catch (err) {
    throw new InvalidParameterError(`Bad parameters and missing X-Registry-Auth: ${(err as Error).message}`);
  }
}

/** fromImage plus tag: a digest in `tag` becomes "@sha256:…"; a reference that has a tag keeps it. */
export function pullReference(fromImage: string, tag: string | undefined): string {
  const last = fromImage.slice(fromImage.lastIndexOf('/') + 1);
  if (!tag || last.includes(':') || fromImage.includes('@')) return fromImage;
  return tag.includes(':') ? `${fromImage}@${tag}` : `${fromImage}:${tag}`;
}

/** The path's catch-all name segments joined back together. */
export function catchAllName(req: Request, key = 'name'): string {
  const value = (req.params as Record<string, string | string[]>)[key];
  return Array.isArray(value) ? value.join('/') : (value ?? '');
}

/** Every value of a repeated query parameter (`names=a&names=b`, `changes=…&changes=…`). */
function queryAll(req: Request, key: string): string[] {
  const value = (req.query as Record<string, unknown>)[key];
  const values = Array.isArray(value) ? value : value === undefined ? [] : [value];
  return values.filter((v): v is string => typeof v === 'string');
}

/** The body of a URL import: the request's own body is not read (as dockerd). */
async function* noBody(): AsyncGenerator<Uint8Array> {
  // nothing
}

/** An AbortSignal that fires when the client goes away before the response is complete. */
function clientAbort(res: Response): AbortSignal {
  const abort = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) abort.abort();
  });
  return abort.signal;
}

/**
 * Runs a streaming operation: a failure before the first line is an ordinary JSON error (its
 * own status); after it, `{"errorDetail":…,"error":…}` in the stream.
 */
async function streamed(
  res: Response,
  run: (stream: JsonProgressStream) => Promise<void>,
  options: { alwaysInStream?: boolean } = {},
): Promise<void> {
  const stream = jsonProgress(res);
  if (options.alwaysInStream) stream.start();
  try {
    await run(stream);
  } catch (err) {
    if (!stream.started) throw err;
    stream.fail(err);
    return;
  }
  stream.end();
}

/** Writes an archive stream as application/x-tar; a failure mid-way cuts the connection. */
async function sendArchive(res: Response, archive: Readable): Promise<void> {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/x-tar');
  try {
    await pipeline(archive, res);
  } catch (err) {
    // Headers (and part of the tar) are out: the client sees a truncated body, never a valid tar.
    res.destroy(err as Error);
  }
}

export function createImagesRouter(backend: ImagesBackend): Router {
  const router = Router();

  // Pull (fromImage) or import (fromSrc).
  router.post('/images/create', async (req, res) => {
    const fromSrc = queryString(req, 'fromSrc');
    if (fromSrc !== undefined && fromSrc !== '') {
      const options: ImportOptions = { signal: clientAbort(res) };
      // Any other fromSrc is a URL the daemon downloads (dockerd ignores the body then).
      if (fromSrc !== '-') options.url = fromSrc;
      const repository = queryString(req, 'repo');
      if (repository) options.repository = repository;
      const tag = queryString(req, 'tag');
      if (tag) options.tag = tag;
      const message = queryString(req, 'message');
      if (message) options.message = message;
      const changes = queryAll(req, 'changes');
      if (changes.length > 0) options.changes = changes;
      await streamed(res, async (stream) => {
        options.onProgress = (p) => stream.write(p);
        const body = fromSrc === '-' ? (req as AsyncIterable<Uint8Array>) : noBody();
        const image = await backend.imageImport(body, options);
        stream.write({ status: image.id });
      });
      return;
    }
    const fromImage = queryString(req, 'fromImage') ?? '';
    if (fromImage === '') throw new InvalidParameterError('fromImage must be given');
    const tag = queryString(req, 'tag');
    const reference = pullReference(fromImage, tag);
    // As dockerd: no tag and a name without tag or digest pulls every tag (`docker pull -a`).
    const allTags = tag === undefined || tag === '';
    const platform = queryString(req, 'platform') || undefined;
    const auth = decodeRegistryAuth(req.headers['x-registry-auth'] as string | undefined);
    const signal = clientAbort(res);
    await streamed(res, async (stream) => {
      try {
        await backend.imagePull(reference, { auth, platform, allTags, signal }, (p) => stream.write(p));
      } catch (err) {
        // dockerd answers a registry's refusal of the credentials with 500, not 401: on a 401 the
        // docker CLI (client.ImagePull's PrivilegeFunc) would prompt for a login and pull again.
        if (err instanceof UnauthorizedError) throw new SystemError(err.message, { cause: err });
        throw err;
      }
    });
  });

  router.get('/images/json', async (req, res) => {
    const filters = parseFilters(queryString(req, 'filters'));
    // The singular `filter` (a reference) was dropped in API 1.41.
    const legacy = queryString(req, 'filter');
    if (legacy && !versionAtLeast(req, '1.41')) filters.reference = [...(filters.reference ?? []), legacy];
    const images = await backend.imageList({ all: queryBool(req, 'all'), filters });
    sendJson(res, 200, images.map(toImageSummary));
  });

  router.post('/images/load', async (req, res) => {
    // dockerd sends 200 at once and reports every load error in the stream.
    const options = { quiet: queryBoolOr(req, 'quiet', true), signal: clientAbort(res) };
    await streamed(
      res,
      async (stream) => {
        await backend.imageLoad(req as AsyncIterable<Uint8Array>, options, (p) => stream.write(p));
      },
      { alwaysInStream: true },
    );
  });

  router.post('/images/prune', async (req, res) => {
    const report = await backend.imagePrune(parseFilters(queryString(req, 'filters')));
    sendJson(res, 200, toPruneReport(report));
  });

  router.get('/images/get', async (req, res) => {
    await sendArchive(res, await backend.imageSave(queryAll(req, 'names')));
  });

  router.get('/images/*name/get', async (req, res) => {
    await sendArchive(res, await backend.imageSave([catchAllName(req)]));
  });

  router.get('/images/*name/json', async (req, res) => {
    const image = await backend.imageInspect(catchAllName(req));
    sendJson(res, 200, toImageInspect(image, STORAGE_DRIVER));
  });

  router.get('/images/*name/history', async (req, res) => {
    const history = await backend.imageHistory(catchAllName(req));
    sendJson(res, 200, history.map(toHistoryItem));
  });

  router.post('/images/*name/tag', async (req, res) => {
    const tag = queryString(req, 'tag');
    await backend.imageTag(catchAllName(req), queryString(req, 'repo') ?? '', tag || undefined);
    res.status(201).end();
  });

  router.post('/images/*name/push', async (req, res) => {
    const name = catchAllName(req);
    const auth = await pushAuth(req);
    const tag = queryString(req, 'tag') || undefined;
    const signal = clientAbort(res);
    await streamed(res, async (stream) => {
      await backend.imagePush(name, { auth, tag, signal }, (p) => stream.write(p));
    });
  });

  router.delete('/images/*name', async (req, res) => {
    const items = await backend.imageRemove(catchAllName(req), {
      force: queryBool(req, 'force'),
      noprune: queryBool(req, 'noprune'),
    });
    sendJson(res, 200, items.map(toDeleteItem));
  });

  return router;
}
