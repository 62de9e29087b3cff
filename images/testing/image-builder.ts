/**
 * Builds image content in memory for tests: tar layers from entry lists (in the given order,
 * fixed mtimes), gzip without timestamps, OCI configs and manifests. Shared by the unit tests'
 * fake registry and the integration fixtures, so both push byte-identical images.
 */
import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';
import * as tar from 'tar-stream';

export const FIXTURE_MTIME = new Date('2024-01-02T03:04:05Z');
export const FIXTURE_CREATED = '2024-01-02T03:04:05Z';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';

export interface FixtureEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: Buffer | string;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  mtime?: Date;
  devmajor?: number;
  devminor?: number;
  /** PAX records (e.g. "SCHILY.xattr.user.x"). */
  pax?: Record<string, string>;
}

/** A tar stream of `entries`, in the given order (tests rely on the order). */
export async function buildTar(entries: FixtureEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const chunk of pack as AsyncIterable<Buffer>) chunks.push(Buffer.from(chunk));
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const content = e.content === undefined ? undefined : Buffer.from(e.content);
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      uname: '',
      gname: '',
      mtime: e.mtime ?? FIXTURE_MTIME,
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
      ...(e.devmajor !== undefined ? { devmajor: e.devmajor } : {}),
      ...(e.devminor !== undefined ? { devminor: e.devminor } : {}),
      ...(e.pax !== undefined ? { pax: e.pax } : {}),
      ...(type === 'file' ? { size: content?.length ?? 0 } : {}),
    };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry(header, content ?? Buffer.alloc(0), cb);
      else pack.entry(header, cb);
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

export function sha256(data: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** gzip with no timestamp or name: stable output for stable input. */
export function gzip(data: Buffer): Buffer {
  return zlib.gzipSync(data, { level: 6 });
}

export interface Layer {
  mediaType: string;
  blob: Buffer;
  digest: string;
  diffID: string;
}

export function gzipLayer(tarBytes: Buffer): Layer {
  const blob = gzip(tarBytes);
  return { mediaType: OCI_LAYER_GZIP, blob, digest: sha256(blob), diffID: sha256(tarBytes) };
}

export function plainLayer(tarBytes: Buffer): Layer {
  return { mediaType: OCI_LAYER_TAR, blob: tarBytes, digest: sha256(tarBytes), diffID: sha256(tarBytes) };
}

export interface BuiltImage {
  layers: Layer[];
  config: Buffer;
  configDigest: string;
  manifest: Buffer;
  manifestDigest: string;
}

export function buildImage(
  layers: Layer[],
  runtime: Record<string, unknown>,
  platform: { architecture: string; os: string; variant?: string } = { architecture: 'amd64', os: 'linux' },
): BuiltImage {
  const config = Buffer.from(
    JSON.stringify({
      created: FIXTURE_CREATED,
      architecture: platform.architecture,
      ...(platform.variant ? { variant: platform.variant } : {}),
      os: platform.os,
      config: runtime,
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffID) },
      history: layers.map(() => ({ created: FIXTURE_CREATED, created_by: 'capsule test fixture' })),
    }),
  );
  const configDigest = sha256(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.blob.length })),
    }),
  );
  return { layers, config, configDigest, manifest, manifestDigest: sha256(manifest) };
}
