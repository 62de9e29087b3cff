/**
 * `docker import`: a rootfs tarball (plain or gzip) becomes a one-layer image, as dockerd 20.10's
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
import * as zlib from 'node:zlib';
import { DataLossError, InvalidParameterError, NotImplementedError } from '../common/errdefs';
import { applyChanges } from './changes';
import { goContainerConfig, goMarshal, goObject, goString } from './go-json';
import type { ServiceContext } from './internals';
import { goArch, goNow } from './internals';
import { fullName, isValidTag, parseNormalizedNamed, referenceString, type Reference } from './reference';
import { peekCompression } from './unpack';
import type { ImageRuntimeConfig, ImportOptions } from './types';

export interface ImportPlan {
  ref: Reference | undefined;
  config: ImageRuntimeConfig;
  message: string;
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
  const message =
    options.message !== undefined && options.message !== ''
      ? options.message
      : `Imported from ${options.source ?? '-'}`;
  return { ref, config, message };
}

/** The uncompressed tar stream of the tarball (gzip detected by its magic). */
async function* uncompressed(input: AsyncIterable<Uint8Array>, signal?: AbortSignal): AsyncGenerator<Buffer> {
  const { compression, source } = await peekCompression(input, signal);
  if (compression !== 'gzip' && compression !== 'none') {
    throw new NotImplementedError(`unsupported compression format: ${compression}`);
  }
  if (compression === 'none') {
    yield* source();
    return;
  }
  const out = new PassThrough();
  pipeline(source() as unknown as Readable, zlib.createGunzip(), out, () => undefined);
  try {
    yield* out as AsyncIterable<Buffer>;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      throw new DataLossError(`failed to register layer: ${(err as Error).message}`, { cause: err });
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
