/**
 * Image routes: pull (POST /images/create), list, inspect. Image names may contain "/" and ":"
 * unescaped in the path (`/images/127.0.0.1:5000/bb:v1/json`): routes use a catch-all parameter.
 */
import { Router, type Request } from 'express';
import { InvalidParameterError, NotImplementedError } from '../../common/errdefs';
import type { ImageRecord, PullProgress, RegistryAuth } from '../../daemon/types';
import { sendJson } from '../errors';
import { parseFilters, queryString } from '../query';
import { jsonProgress } from '../streams/json-progress';
import { STORAGE_DRIVER } from '../types/system';
import { toImageInspect, toImageSummary } from '../types/images';

export interface ImagesBackend {
  imagePull(
    reference: string,
    options: { auth?: RegistryAuth; platform?: string; signal?: AbortSignal },
    onProgress: (p: PullProgress) => void,
  ): Promise<ImageRecord>;
  imageList(): Promise<ImageRecord[]>;
  imageInspect(reference: string): Promise<ImageRecord>;
}

/** X-Registry-Auth: base64url(JSON); "e30=" ({}) and garbage mean no credentials. */
export function decodeRegistryAuth(header: string | undefined): RegistryAuth | undefined {
  if (!header) return undefined;
  try {
    const json = JSON.parse(Buffer.from(header, 'base64url').toString('utf8')) as unknown;
    if (typeof json !== 'object' || json === null || Object.keys(json).length === 0) return undefined;
    return json as RegistryAuth;
  } catch {
    return undefined;
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

function globMatch(pattern: string, text: string): boolean {
  const re = new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '[^/]*')
      .replace(/\?/g, '.')}$`,
  );
  return re.test(text);
}

function referenceMatches(image: ImageRecord, pattern: string): boolean {
  return image.repoTags.some((tag) => {
    const repo = tag.slice(0, tag.lastIndexOf(':'));
    return globMatch(pattern, tag) || globMatch(pattern, repo);
  });
}

export function createImagesRouter(backend: ImagesBackend): Router {
  const router = Router();

  router.post('/images/create', async (req, res) => {
    const fromImage = queryString(req, 'fromImage') ?? '';
    if (queryString(req, 'fromSrc'))
      throw new NotImplementedError('importing images (fromSrc) is not supported yet');
    if (fromImage === '') throw new InvalidParameterError('fromImage must be given');
    const reference = pullReference(fromImage, queryString(req, 'tag'));
    const platform = queryString(req, 'platform') || undefined;
    const auth = decodeRegistryAuth(req.headers['x-registry-auth'] as string | undefined);
    const abort = new AbortController();
    res.on('close', () => abort.abort());
    const stream = jsonProgress(res);
    try {
      await backend.imagePull(reference, { auth, platform, signal: abort.signal }, (p) => stream.write(p));
    } catch (err) {
      // Before any progress the failure is a normal error response; after, it goes in-stream.
      if (!stream.started) throw err;
      stream.fail(err);
      return;
    }
    stream.end();
  });

  router.get('/images/json', async (req, res) => {
    const filters = parseFilters(queryString(req, 'filters'));
    for (const key of Object.keys(filters)) {
      if (!['reference', 'dangling', 'label', 'before', 'since'].includes(key)) {
        throw new InvalidParameterError(`Invalid filter '${key}'`);
      }
    }
    let images = await backend.imageList();
    const refs = filters.reference ?? [];
    if (refs.length > 0) images = images.filter((i) => refs.some((r) => referenceMatches(i, r)));
    const dangling = filters.dangling ?? [];
    if (dangling.includes('true') || dangling.includes('1'))
      images = images.filter((i) => i.repoTags.length === 0);
    else if (dangling.includes('false') || dangling.includes('0'))
      images = images.filter((i) => i.repoTags.length > 0);
    for (const label of filters.label ?? []) {
      const eq = label.indexOf('=');
      images = images.filter((i) => {
        const labels = i.config.config?.Labels ?? {};
        return eq < 0 ? label in labels : labels[label.slice(0, eq)] === label.slice(eq + 1);
      });
    }
    const summaries = images.map(toImageSummary).sort((a, b) => b.Created - a.Created);
    sendJson(res, 200, summaries);
  });

  router.get('/images/*name/json', async (req, res) => {
    const image = await backend.imageInspect(catchAllName(req));
    sendJson(res, 200, toImageInspect(image, STORAGE_DRIVER));
  });

  return router;
}
