/**
 * Image manifests and indexes as the registry serves them (Docker schema2, Docker manifest list,
 * OCI manifest, OCI index): media types, strict parsing of what is needed, and the platform
 * selection dockerd does for a manifest list.
 */
import { InvalidParameterError, NotFoundError, NotImplementedError } from '../common/errdefs';
import { isSha256Digest } from './reference';

export const MediaType = {
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  DockerManifestV1: 'application/vnd.docker.distribution.manifest.v1+json',
  DockerManifestV1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  DockerConfig: 'application/vnd.docker.container.image.v1+json',
  DockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  DockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  OciConfig: 'application/vnd.oci.image.config.v1+json',
  OciLayer: 'application/vnd.oci.image.layer.v1.tar',
  OciLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  OciLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  OciLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  OciLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
} as const;

/** The Accept header of a manifest GET: every format we can pull, single-image and multi-platform. */
export const MANIFEST_ACCEPT = [
  MediaType.DockerManifest,
  MediaType.DockerManifestList,
  MediaType.OciManifest,
  MediaType.OciIndex,
].join(', ');

const CONFIG_TYPES = new Set<string>([MediaType.DockerConfig, MediaType.OciConfig]);
const LAYER_TYPES = new Set<string>([
  MediaType.DockerLayerGzip,
  MediaType.DockerLayerForeignGzip,
  MediaType.OciLayer,
  MediaType.OciLayerGzip,
  MediaType.OciLayerZstd,
  MediaType.OciLayerNondistributable,
  MediaType.OciLayerNondistributableGzip,
]);

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  platform?: Platform & { 'os.version'?: string; 'os.features'?: string[] };
}

export interface ImageManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
}

export type ParsedManifest = ImageManifest | ImageIndex;

/** Limit on manifest and config documents (containerd uses the same bound). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

function malformed(what: string): InvalidParameterError {
  return new InvalidParameterError(`invalid manifest: ${what}`);
}

function parseDescriptor(value: unknown, where: string): Descriptor {
  if (typeof value !== 'object' || value === null) throw malformed(`${where} is not an object`);
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== 'string') throw malformed(`${where} has no mediaType`);
  if (typeof d.digest !== 'string') throw malformed(`${where} has no digest`);
  if (!isSha256Digest(d.digest)) {
    throw new InvalidParameterError(`unsupported digest ${JSON.stringify(d.digest)} in ${where}`);
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw malformed(`${where} has an invalid size`);
  }
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (Array.isArray(d.urls)) out.urls = d.urls.filter((u): u is string => typeof u === 'string');
  if (typeof d.annotations === 'object' && d.annotations !== null) {
    out.annotations = d.annotations as Record<string, string>;
  }
  if (typeof d.platform === 'object' && d.platform !== null) {
    const p = d.platform as Record<string, unknown>;
    if (typeof p.os === 'string' && typeof p.architecture === 'string') {
      out.platform = {
        os: p.os,
        architecture: p.architecture,
        ...(typeof p.variant === 'string' && p.variant !== '' ? { variant: p.variant } : {}),
      };
    }
  }
  return out;
}

/**
 * Parses a manifest body. `contentType` is the response's Content-Type, used when the document
 * has no mediaType field (OCI makes it optional).
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): ParsedManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw malformed('not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw malformed('not an object');
  const m = doc as Record<string, unknown>;
  const headerType = contentType?.split(';')[0]?.trim();
  const mediaType = typeof m.mediaType === 'string' ? m.mediaType : (headerType ?? '');
  if (
    m.schemaVersion === 1 ||
    mediaType === MediaType.DockerManifestV1 ||
    mediaType === MediaType.DockerManifestV1Signed
  ) {
    throw new NotImplementedError(
      'Docker Image manifest version 2, schema 1 is not supported: the image has to be pushed again in the OCI format or as Docker Image manifest version 2, schema 2',
    );
  }
  if (m.schemaVersion !== 2) throw malformed(`unsupported schemaVersion ${JSON.stringify(m.schemaVersion)}`);
  const isIndex =
    mediaType === MediaType.DockerManifestList ||
    mediaType === MediaType.OciIndex ||
    (mediaType === '' && Array.isArray(m.manifests));
  if (isIndex) {
    if (!Array.isArray(m.manifests)) throw malformed('index has no manifests');
    return {
      kind: 'index',
      mediaType: mediaType || MediaType.OciIndex,
      manifests: m.manifests.map((d, i) => parseDescriptor(d, `manifests[${i}]`)),
    };
  }
  const isManifest =
    mediaType === MediaType.DockerManifest ||
    mediaType === MediaType.OciManifest ||
    (mediaType === '' && m.config !== undefined);
  if (!isManifest) {
    throw new NotImplementedError(`unsupported manifest media type ${JSON.stringify(mediaType)}`);
  }
  if (!Array.isArray(m.layers)) throw malformed('manifest has no layers');
  return {
    kind: 'manifest',
    mediaType: mediaType || MediaType.OciManifest,
    config: parseDescriptor(m.config, 'config'),
    layers: m.layers.map((d, i) => parseDescriptor(d, `layers[${i}]`)),
  };
}

/** Rejects manifests whose config or layers are not a container image (helm charts, wasm, …). */
export function assertImageManifest(manifest: ImageManifest): void {
  if (!CONFIG_TYPES.has(manifest.config.mediaType)) {
    throw new NotImplementedError(
      `Encountered remote ${JSON.stringify(manifest.config.mediaType)}(unknown) when fetching`,
    );
  }
  for (const layer of manifest.layers) {
    if (!LAYER_TYPES.has(layer.mediaType)) {
      throw new NotImplementedError(`unsupported layer media type ${JSON.stringify(layer.mediaType)}`);
    }
  }
}

const ARCH_ALIASES: Record<string, Platform['architecture']> = {
  x86_64: 'amd64',
  'x86-64': 'amd64',
  aarch64: 'arm64',
  armhf: 'arm',
  armel: 'arm',
  i386: '386',
  i486: '386',
  i586: '386',
  i686: '386',
};
const ARCH_ALIAS_VARIANT: Record<string, string> = { armhf: 'v7', armel: 'v6' };

/** containerd's platforms.Normalize, for the architectures that matter here. */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase();
  const rawArch = p.architecture.toLowerCase();
  const architecture = ARCH_ALIASES[rawArch] ?? rawArch;
  let variant = p.variant?.toLowerCase() ?? ARCH_ALIAS_VARIANT[rawArch];
  if (architecture === 'arm64' && (variant === undefined || variant === '8')) variant = 'v8';
  if (architecture === 'arm' && (variant === undefined || variant === '')) variant = 'v7';
  if (architecture === 'arm' && variant !== undefined && /^[5-8]$/.test(variant)) variant = `v${variant}`;
  if (architecture === 'amd64' && variant === 'v1') variant = undefined;
  return { os, architecture, ...(variant !== undefined && variant !== '' ? { variant } : {}) };
}

/** "linux/amd64" or "linux/arm/v7" (variant only when given). */
export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, ...(p.variant !== undefined ? [p.variant] : [])].join('/');
}

/** "os/arch[/variant]"; InvalidParameterError otherwise. Default linux/amd64. */
export function parsePlatform(s: string | undefined): Platform {
  if (s === undefined || s === '') return { os: 'linux', architecture: 'amd64' };
  const parts = s.split('/');
  const [os, architecture, variant] = parts;
  const ok = (x: string | undefined): x is string =>
    x !== undefined && /^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(x);
  if (parts.length > 3 || !ok(os) || !ok(architecture) || (variant !== undefined && !ok(variant))) {
    throw new InvalidParameterError(`"${s}": unknown operating system or architecture: invalid argument`);
  }
  return { os, architecture, ...(variant !== undefined ? { variant } : {}) };
}

/**
 * Picks the manifest for `want` from an index, as dockerd does: same os and architecture, and the
 * same variant when one is asked for; without one, the architecture's default variant is preferred.
 * Entries without a platform (attestations, …) never match. NotFoundError when nothing matches.
 */
export function selectManifest(index: ImageIndex, want: Platform): Descriptor {
  const w = normalizePlatform(want);
  const candidates = index.manifests.filter((d) => {
    if (d.platform === undefined) return false;
    if (d.mediaType !== MediaType.DockerManifest && d.mediaType !== MediaType.OciManifest) return false;
    const p = normalizePlatform(d.platform);
    if (p.os !== w.os || p.architecture !== w.architecture) return false;
    return want.variant === undefined || p.variant === w.variant;
  });
  const preferred = candidates.find((d) => d.platform && normalizePlatform(d.platform).variant === w.variant);
  const chosen = preferred ?? candidates[0];
  if (chosen === undefined) {
    throw new NotFoundError(`no matching manifest for ${formatPlatform(want)} in the manifest list entries`);
  }
  return chosen;
}
