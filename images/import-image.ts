/**
 * `docker import`: a rootfs tarball (plain, gzip or zstd) becomes a one-layer image, as dockerd 20.10's
 * ImportImage makes it. The reference and the changes are validated before the body is read. The
 * tarball is stored uncompressed in the content store (its digest is the layer's diffID), then
 * unpacked by the same safe extractor as pulled layers; only then are the config and the image
 * record written and the tag set.
 *
 * The config has dockerd's layout (top-level keys sorted, container.Config in struct order):
 * architecture, comment, config, container_config, created, history [{created, comment}], os,
 * rootfs.
 */
import { PassThrough, pipeline, type Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import {
  DataLossError,
  ForbiddenError,
  InvalidParameterError,
  NotFoundError,
  SystemError,
  UnauthorizedError,
} from '../common/errdefs';
import { applyChanges } from './changes';
import { goContainerConfig, goMarshal, goObject, goString } from './go-json';
import type { ServiceContext } from './internals';
import { goArch, goNow } from './internals';
import { progressLine, ProgressThrottle } from './progress';
import { httpGet } from './registry-client';
import { fullName, isValidTag, parseNormalizedNamed, referenceString, type Reference } from './reference';
import { decompressors, peekCompression } from './unpack';
import type { ImageRuntimeConfig, ImportOptions, PullProgress } from './types';

export interface ImportPlan {
  ref: Reference | undefined;
  config: ImageRuntimeConfig;
  message: string;
  /** Where to download the tarball from (`fromSrc` other than "-"), scheme added. */
  url?: string;
}

/** Validates what can be checked before the body is read (dockerd's order and texts). */
export function planImport(options: ImportOptions): ImportPlan {
  let ref: Reference | undefined;
  if (options.repository !== undefined && options.repository !== '') {
    ref = parseNormalizedNamed(options.repository);
    if (ref.digest !== undefined) throw new InvalidParameterError('cannot import digest reference');
    if (options.tag !== undefined && options.tag !== '') {
      if (!isValidTag(options.tag)) throw new InvalidParameterError('invalid tag format');
      ref = { domain: ref.domain, path: ref.path, tag: options.tag };
    }
    if (ref.tag === undefined) ref = { ...ref, tag: 'latest' };
  }
  const config = applyChanges(options.changes ?? []);
  const url = options.url !== undefined ? importUrl(options.url) : undefined;
  const message =
    options.message !== undefined && options.message !== ''
      ? options.message
      : `Imported from ${url ?? options.source ?? '-'}`;
  return { ref, config, message, ...(url !== undefined ? { url } : {}) };
}

/** dockerd's reading of `fromSrc`: without a scheme it is an http URL. */
function importUrl(src: string): string {
  const address = src.includes('://') ? src : `http://${src}`;
  try {
    new URL(address);
  } catch {
    throw new InvalidParameterError(`parse ${JSON.stringify(address)}: invalid URL`);
  }
  return address;
}

const MAX_ERROR_BODY = 64 * 1024;

/**
 * Opens the tarball of `docker import <URL>` (dockerd's remotes.GetWithStatusError): a status of
 * 400 or more fails with the body in the message — 404 NotFound, 400 InvalidParameter, 401
 * Unauthorized, 403 Forbidden, others System —, before any progress line is written.
 */
export async function openImportUrl(
  address: string,
  signal?: AbortSignal,
): Promise<{ body: IncomingMessage; total: number }> {
  const res = await httpGet(new URL(address), signal);
  const status = res.statusCode ?? 0;
  if (status < 400) {
    const length = Number(res.headers['content-length']);
    return {
      body: res,
      total: res.headers['content-length'] !== undefined && Number.isSafeInteger(length) ? length : -1,
    };
  }
  let text = `failed to GET ${address} with status ${status} ${res.statusMessage ?? ''}`.trimEnd();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    if (size < MAX_ERROR_BODY) chunks.push(chunk);
    size += chunk.length;
  }
  text += `: ${Buffer.concat(chunks).subarray(0, MAX_ERROR_BODY).toString('utf8').trim()}`;
  switch (status) {
    case 404:
      throw new NotFoundError(text);
    case 400:
      throw new InvalidParameterError(text);
    case 401:
      throw new UnauthorizedError(text);
    case 403:
      throw new ForbiddenError(text);
    default:
      throw new SystemError(text);
  }
}

/** The downloaded body, counted into dockerd's "Importing" progress lines (no id). */
export async function* importProgress(
  body: AsyncIterable<Buffer>,
  total: number,
  emit: (p: PullProgress) => void,
): AsyncGenerator<Buffer> {
  let current = 0;
  const throttle = new ProgressThrottle((n) => {
    const { id: _id, ...line } = progressLine('Importing', '', n, total);
    emit(line);
  });
  for await (const chunk of body) {
    current += chunk.length;
    throttle.update(current, total > 0 && current >= total);
    yield chunk;
  }
}

/** The uncompressed tar stream of the tarball (gzip or zstd detected by its magic). */
async function* uncompressed(input: AsyncIterable<Uint8Array>, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const { compression, source } = await peekCompression(input, signal);
  const decompress = decompressors(compression, 'archive');
  if (decompress.length === 0) {
    yield* source();
    return;
  }
  const out = new PassThrough();
  pipeline(
    [source() as unknown as Readable, ...decompress, out] as unknown as [Readable, PassThrough],
    () => undefined,
  );
  try {
    yield* out as AsyncIterable<Buffer>;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      throw new DataLossError(`failed to register layer: ${(err as Error).message}`, { cause: err });
    }
    if (err instanceof DataLossError) {
      throw new DataLossError(`failed to register layer: ${err.message}`, { cause: err });
    }
    throw err;
  } finally {
    out.destroy();
  }
}

/** The config document of an imported image, byte-compatible with dockerd's layout. */
export function importedConfig(plan: ImportPlan, diffID: string, created: string): Buffer {
  const history = goObject([
    ['created', goString(created)],
    ['comment', goString(plan.message)],
  ]);
  const fields: Array<[string, string]> = [
    ['architecture', goString(goArch())],
    ['comment', goString(plan.message)],
    ['config', goContainerConfig(plan.config)],
    ['container_config', goContainerConfig({})],
    ['created', goString(created)],
    ['history', `[${history}]`],
    ['os', goString('linux')],
    [
      'rootfs',
      goObject([
        ['type', goString('layers')],
        ['diff_ids', goMarshal([diffID])],
      ]),
    ],
  ];
  return Buffer.from(goObject(fields), 'utf8');
}

/** Imports; the caller has entered the content gate. Returns the new image id. */
export async function importImage(
  ctx: ServiceContext,
  plan: ImportPlan,
  tarball: AsyncIterable<Uint8Array>,
  signal?: AbortSignal,
): Promise<string> {
  const { digest: diffID } = await ctx.content.ingestComputed(uncompressed(tarball, signal), {
    ...(signal ? { signal } : {}),
  });
  const layer = await ctx.layers.unpack(diffID, ctx.content.blobPath(diffID), diffID, {
    ...(signal ? { signal } : {}),
  });
  const created = goNow();
  const config = importedConfig(plan, diffID, created);
  const { digest: id } = await ctx.content.ingestComputed([config]);
  await ctx.images.putImage({ id, diffIDs: [diffID], size: layer.size, storedAt: new Date().toISOString() });
  if (plan.ref !== undefined) {
    await ctx.images.setRefs([referenceString(plan.ref)], id);
    await ctx.images.updateImage(id, { lastTagTime: new Date().toISOString() });
  }
  ctx.log.info('imported', { id, ref: plan.ref ? fullName(plan.ref) : undefined });
  return id;
}
