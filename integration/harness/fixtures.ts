/**
 * Fixture images, built by our own code as OCI image layouts in a temp dir and pushed to a test
 * registry with skopeo. Everything is deterministic (fixed mtimes, sorted entries, gzip without a
 * timestamp), so digests are stable on a given machine (busybox's bytes come from busybox-static).
 *
 *  - busybox: /bin/busybox + applet symlinks, /etc/passwd (root, nobody), /etc/group, /tmp, /root;
 *    Env PATH=…, Cmd ["sh"].
 *  - multi: the busybox layer, then layers with ownership, modes, set-id bits, symlinks (relative
 *    and absolute), hardlinks, a plain (uncompressed) tar layer with a whiteout and an opaque dir,
 *    and a layer with a duplicate entry.
 *  - multiarch: an OCI index with linux/amd64 (busybox), linux/arm64/v8 (a tiny image) and an
 *    attestation-like entry with platform unknown/unknown.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import {
  buildImage,
  buildTar,
  gzipLayer,
  OCI_INDEX,
  OCI_MANIFEST,
  plainLayer,
  sha256,
  type BuiltImage,
  type FixtureEntry,
  type Layer,
} from '../../images/testing/image-builder';
import { requireCommand } from './registry';
import { prng } from '../../common/testing/prng';

export {
  buildImage,
  buildTar,
  gzipLayer,
  plainLayer,
  sha256,
  type BuiltImage,
  type FixtureEntry,
  type Layer,
};
export { FIXTURE_CREATED, FIXTURE_MTIME } from '../../images/testing/image-builder';

const execFileAsync = promisify(execFile);

export const BUSYBOX_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Writes an OCI image layout whose index.json holds one descriptor (an image or an index). */
async function writeLayout(
  dir: string,
  blobs: Buffer[],
  top: { mediaType: string; bytes: Buffer },
): Promise<void> {
  await fs.mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const blob of [...blobs, top.bytes]) {
    await fs.writeFile(path.join(dir, 'blobs', 'sha256', sha256(blob).slice(7)), blob);
  }
  await fs.writeFile(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fs.writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: top.mediaType, digest: sha256(top.bytes), size: top.bytes.length }],
    }),
  );
}

export interface PushOptions {
  /** Manifest format in the registry: OCI as built (default), or converted to Docker schema2. */
  format?: 'oci' | 'v2s2';
  creds?: { user: string; password: string };
}

async function skopeoCopy(
  layoutDir: string,
  dest: string,
  extra: string[],
  opts: PushOptions,
): Promise<void> {
  await requireCommand('skopeo', 'skopeo');
  const policy = path.join(layoutDir, '..', 'policy.json');
  await fs.writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  const args = [
    '--policy',
    policy,
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    ...(opts.creds ? ['--dest-creds', `${opts.creds.user}:${opts.creds.password}`] : []),
    ...(opts.format === 'v2s2' ? ['--format', 'v2s2'] : ['--preserve-digests']),
    ...extra,
    `oci:${layoutDir}`,
    `docker://${dest}`,
  ];
  try {
    await execFileAsync('skopeo', args, { timeout: 120_000 });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`skopeo copy to ${dest} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

export interface PushedImage {
  /** "127.0.0.1:PORT/name:tag" */
  reference: string;
  image: BuiltImage;
  /** The digest the registry serves for the tag (differs from image.manifestDigest for v2s2). */
  manifestDigest: string;
}

async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-fixture-'));
  try {
    return await fn(dir);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** The digest of the manifest a registry serves for NAME:TAG, read with skopeo (any auth). */
export async function registryManifestDigest(
  host: string,
  name: string,
  tag: string,
  creds?: { user: string; password: string },
): Promise<string> {
  const args = [
    'inspect',
    '--raw',
    '--tls-verify=false',
    ...(creds ? ['--creds', `${creds.user}:${creds.password}`] : []),
    `docker://${host}/${name}:${tag}`,
  ];
  try {
    const { stdout } = await execFileAsync('skopeo', args, { timeout: 60_000, encoding: 'buffer' });
    return sha256(stdout);
  } catch (err) {
    const e = err as Error & { stderr?: Buffer };
    throw new Error(
      `skopeo inspect ${host}/${name}:${tag} failed: ${(e.stderr?.toString() ?? e.message).trim()}`,
      {
        cause: err,
      },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// busybox

let busyboxLayerCache: Promise<Layer> | undefined;

/** The busybox rootfs layer (cached per process: building it reads /bin/busybox). */
export function busyboxLayer(): Promise<Layer> {
  busyboxLayerCache ??= (async () => {
    await requireCommand('busybox', 'busybox-static');
    const bin = (await execFileAsync('sh', ['-c', 'command -v busybox'])).stdout.trim();
    const binary = await fs.readFile(bin);
    const { stdout } = await execFileAsync(bin, ['--list']);
    const applets = [...new Set(stdout.split('\n').map((s) => s.trim()))]
      .filter((a) => a !== '' && a !== 'busybox' && /^[A-Za-z0-9_.[-]+$/.test(a))
      .sort();
    const entries: FixtureEntry[] = [
      { name: 'bin/', type: 'directory' },
      { name: 'bin/busybox', content: binary, mode: 0o755 },
      ...applets.map((a): FixtureEntry => ({ name: `bin/${a}`, type: 'symlink', linkname: 'busybox' })),
      { name: 'etc/', type: 'directory' },
      { name: 'etc/group', content: 'root:x:0:\nnobody:x:65534:\n' },
      {
        name: 'etc/passwd',
        content: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n',
      },
      { name: 'root/', type: 'directory', mode: 0o700 },
      { name: 'tmp/', type: 'directory', mode: 0o1777 },
    ];
    return gzipLayer(await buildTar(entries));
  })();
  return busyboxLayerCache;
}

export async function buildBusybox(): Promise<BuiltImage> {
  return buildImage([await busyboxLayer()], { Env: [`PATH=${BUSYBOX_PATH}`], Cmd: ['sh'] });
}

export async function pushImage(
  registryHost: string,
  name: string,
  tag: string,
  image: BuiltImage,
  opts: PushOptions = {},
): Promise<PushedImage> {
  const reference = `${registryHost}/${name}:${tag}`;
  await withTempDir(async (dir) => {
    const layout = path.join(dir, 'layout');
    await writeLayout(layout, [...image.layers.map((l) => l.blob), image.config], {
      mediaType: OCI_MANIFEST,
      bytes: image.manifest,
    });
    await skopeoCopy(layout, reference, [], opts);
  });
  const manifestDigest = await registryManifestDigest(registryHost, name, tag, opts.creds);
  return { reference, image, manifestDigest };
}

/** Builds busybox and pushes it as HOST/NAME:TAG. */
export async function pushBusybox(
  registryHost: string,
  name = 'busybox',
  tag = 'latest',
  opts: PushOptions = {},
): Promise<PushedImage> {
  return pushImage(registryHost, name, tag, await buildBusybox(), opts);
}

// ---------------------------------------------------------------------------------------------
// multi-layer

export const MULTI_OWNED_MTIME = new Date('2001-02-03T04:05:06Z');

export async function buildMultiLayer(): Promise<BuiltImage> {
  const base = await busyboxLayer();
  const features = gzipLayer(
    await buildTar([
      { name: 'data/', type: 'directory' },
      { name: 'data/keep', content: 'keep\n' },
      { name: 'data/gone', content: 'gone\n' },
      { name: 'data/opq/', type: 'directory' },
      { name: 'data/opq/old', content: 'old\n' },
      { name: 'data/owned', content: 'owned\n', uid: 1000, gid: 1001, mode: 0o640, mtime: MULTI_OWNED_MTIME },
      { name: 'data/setuid', content: '#!/bin/sh\n', mode: 0o4755 },
      { name: 'data/abs-link', type: 'symlink', linkname: '/etc/passwd' },
      { name: 'data/rel-link', type: 'symlink', linkname: 'keep' },
      { name: 'data/hard', type: 'link', linkname: 'data/keep' },
      {
        name: 'data/private/',
        type: 'directory',
        mode: 0o700,
        uid: 1000,
        gid: 1000,
        mtime: MULTI_OWNED_MTIME,
      },
      { name: 'data/private/secret', content: 'secret\n', mode: 0o600, uid: 1000, gid: 1000 },
      { name: 'data/fifo', type: 'fifo', mode: 0o644 },
      { name: 'data/null', type: 'character-device', devmajor: 1, devminor: 3 },
    ]),
  );
  const whiteouts = plainLayer(
    await buildTar([
      { name: 'data/', type: 'directory' },
      { name: 'data/.wh.gone', content: '' },
      { name: 'data/opq/', type: 'directory' },
      { name: 'data/opq/.wh..wh..opq', content: '' },
      { name: 'data/opq/new', content: 'new\n' },
      { name: 'etc/', type: 'directory' },
      { name: 'etc/motd', content: 'layer three\n' },
    ]),
  );
  const duplicates = gzipLayer(
    await buildTar([
      { name: './', type: 'directory', mode: 0o755 },
      { name: 'etc/', type: 'directory' },
      { name: 'etc/motd', content: 'layer four, first\n' },
      { name: 'etc/motd', content: 'layer four, second\n' },
      { name: '/abs/', type: 'directory' },
      { name: '/abs/file', content: 'confined\n' },
    ]),
  );
  return buildImage([base, features, whiteouts, duplicates], {
    Env: [`PATH=${BUSYBOX_PATH}`],
    Cmd: ['sh'],
    WorkingDir: '/data',
    Labels: { 'capsule.fixture': 'multi' },
  });
}

export async function pushMultiLayer(
  registryHost: string,
  name = 'multi',
  tag = 'latest',
  opts: PushOptions = {},
): Promise<PushedImage> {
  return pushImage(registryHost, name, tag, await buildMultiLayer(), opts);
}

// ---------------------------------------------------------------------------------------------
// multi-arch

export interface PushedIndex {
  reference: string;
  indexDigest: string;
  amd64: BuiltImage;
  arm64: BuiltImage;
}

export async function pushMultiArch(
  registryHost: string,
  name = 'multiarch',
  tag = 'latest',
): Promise<PushedIndex> {
  const amd64 = await buildBusybox();
  const armLayer = gzipLayer(await buildTar([{ name: 'arch', content: 'arm64\n' }]));
  const arm64 = buildImage(
    [armLayer],
    { Cmd: ['/bin/true'] },
    { architecture: 'arm64', os: 'linux', variant: 'v8' },
  );
  // An "attestation" entry as BuildKit writes them: platform unknown/unknown, never selected.
  const attestation = buildImage(
    [gzipLayer(await buildTar([{ name: 'sbom.json', content: '{}' }]))],
    {},
    {
      architecture: 'unknown',
      os: 'unknown',
    },
  );
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: OCI_MANIFEST,
          digest: arm64.manifestDigest,
          size: arm64.manifest.length,
          platform: { architecture: 'arm64', os: 'linux', variant: 'v8' },
        },
        {
          mediaType: OCI_MANIFEST,
          digest: amd64.manifestDigest,
          size: amd64.manifest.length,
          platform: { architecture: 'amd64', os: 'linux' },
        },
        {
          mediaType: OCI_MANIFEST,
          digest: attestation.manifestDigest,
          size: attestation.manifest.length,
          platform: { architecture: 'unknown', os: 'unknown' },
          annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
        },
      ],
    }),
  );
  const reference = `${registryHost}/${name}:${tag}`;
  await withTempDir(async (dir) => {
    const layout = path.join(dir, 'layout');
    const blobs: Buffer[] = [];
    for (const img of [amd64, arm64, attestation]) {
      blobs.push(...img.layers.map((l) => l.blob), img.config, img.manifest);
    }
    await writeLayout(layout, blobs, { mediaType: OCI_INDEX, bytes: index });
    await skopeoCopy(layout, reference, ['--all'], {});
  });
  const indexDigest = await registryManifestDigest(registryHost, name, tag);
  return { reference, indexDigest, amd64, arm64 };
}

// ---------------------------------------------------------------------------------------------
// large multi-layer (crash test, pull benchmark)

export interface LargeImageOptions {
  /** Number of layers (default 5). */
  layers?: number;
  /** Uncompressed bytes per layer, roughly (default 12 MiB). */
  layerBytes?: number;
  /** Seed for the deterministic content generator (default 1). */
  seed?: number;
}

/**
 * File contents that compress about as real image layers do (≈ 2–3× overall with gzip -6): text
 * made of words from a fixed vocabulary (config files, scripts, docs) and "object code" whose bytes
 * follow a skewed distribution (binaries, shared libraries) — neither all zeros nor all random.
 */
function largeContent(next: () => number, size: number, text: boolean, vocabulary: string[]): Buffer {
  if (text) {
    const parts: string[] = [];
    let length = 0;
    while (length < size) {
      const word = vocabulary[Math.floor(next() * next() * vocabulary.length)] ?? 'x';
      const sep = next() < 0.08 ? '\n' : ' ';
      parts.push(word, sep);
      length += word.length + 1;
    }
    return Buffer.from(parts.join('')).subarray(0, size);
  }
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) {
    const r = next();
    out[i] = Math.floor(256 * r * r * r * r);
  }
  return out;
}

/**
 * A multi-layer image of tens of MiB with many files of mixed sizes (1 KiB–512 KiB, log-uniform)
 * in nested directories, a symlink and a hardlink per layer, and an upper layer that replaces a
 * few files of the one below. Deterministic for given options.
 */
export async function buildLargeImage(opts: LargeImageOptions = {}): Promise<BuiltImage> {
  const count = opts.layers ?? 5;
  const layerBytes = opts.layerBytes ?? 12 * 1024 * 1024;
  const next = prng(opts.seed ?? 1);
  const vocabulary: string[] = [];
  for (let i = 0; i < 4000; i++) {
    const len = 2 + Math.floor(next() * 10);
    let w = '';
    for (let j = 0; j < len; j++) w += String.fromCharCode(97 + Math.floor(next() * 26));
    vocabulary.push(w);
  }
  const layers: Layer[] = [await busyboxLayer()];
  for (let l = 0; l < count - 1; l++) {
    const root = `opt/layer${l}/`;
    const entries: FixtureEntry[] = [
      { name: 'opt/', type: 'directory' },
      { name: root, type: 'directory' },
    ];
    let total = 0;
    let n = 0;
    const files: string[] = [];
    for (let d = 0; total < layerBytes; d++) {
      const dir = `${root}d${d}/`;
      entries.push({ name: dir, type: 'directory' });
      for (let f = 0; f < 20 && total < layerBytes; f++, n++) {
        const size = Math.floor(1024 * Math.pow(512, next()));
        const text = next() < 0.7;
        files.push(`${dir}f${f}${text ? '.txt' : '.so'}`);
        entries.push({
          name: files[files.length - 1] ?? '',
          content: largeContent(next, size, text, vocabulary),
          mode: text ? 0o644 : 0o755,
        });
        total += size;
      }
    }
    entries.push({ name: `${root}first`, type: 'symlink', linkname: (files[0] ?? '').slice(root.length) });
    entries.push({ name: `${root}hard`, type: 'link', linkname: files[1] ?? '' });
    if (l > 0) {
      // Replaces a file of the layer below.
      entries.push({ name: `opt/layer${l - 1}/`, type: 'directory' });
      entries.push({ name: `opt/layer${l - 1}/replaced`, content: `replaced by layer ${l}\n` });
    }
    entries.push({ name: `${root}replaced`, content: `layer ${l}\n` });
    layers.push(gzipLayer(await buildTar(entries)));
  }
  return buildImage(layers, {
    Env: [`PATH=${BUSYBOX_PATH}`],
    Cmd: ['sh'],
    Labels: { 'capsule.fixture': 'large' },
  });
}

// ---------------------------------------------------------------------------------------------
// zstd

export interface PushedZstd {
  reference: string;
  /** The image as built (plain tar layers: skopeo compresses them with zstd on the way). */
  image: BuiltImage;
  /** The manifest the registry serves (OCI, zstd layer media types and digests). */
  manifest: {
    layers: Array<{ mediaType: string; digest: string; size: number }>;
    config: { digest: string };
  };
}

/**
 * Builds busybox plus a small second layer as plain tar layers and pushes it with
 * `skopeo copy --dest-compress-format zstd`, so the registry holds real zstd-compressed blobs
 * (`application/vnd.oci.image.layer.v1.tar+zstd`) made by another implementation than ours.
 */
export async function pushZstdImage(
  registryHost: string,
  name = 'zstd',
  tag = 'latest',
): Promise<PushedZstd> {
  await requireCommand('skopeo', 'skopeo');
  const busybox = await busyboxLayer();
  const plainBusybox = plainLayer(zlibGunzip(busybox.blob));
  const extra = plainLayer(
    await buildTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/zstd-marker', content: 'compressed with zstd\n'.repeat(1000) },
    ]),
  );
  const image = buildImage([plainBusybox, extra], { Env: [`PATH=${BUSYBOX_PATH}`], Cmd: ['sh'] });
  const reference = `${registryHost}/${name}:${tag}`;
  await withTempDir(async (dir) => {
    const layout = path.join(dir, 'layout');
    await writeLayout(layout, [...image.layers.map((l) => l.blob), image.config], {
      mediaType: OCI_MANIFEST,
      bytes: image.manifest,
    });
    const policy = path.join(dir, 'policy.json');
    await fs.writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
    const args = [
      '--policy',
      policy,
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      '--format',
      'oci',
      '--dest-compress-format',
      'zstd',
      `oci:${layout}`,
      `docker://${reference}`,
    ];
    try {
      await execFileAsync('skopeo', args, { timeout: 120_000 });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`skopeo copy (zstd) to ${reference} failed: ${(e.stderr ?? e.message).trim()}`, {
        cause: err,
      });
    }
  });
  const { stdout } = await execFileAsync(
    'skopeo',
    ['inspect', '--raw', '--tls-verify=false', `docker://${reference}`],
    {
      timeout: 60_000,
    },
  );
  return { reference, image, manifest: JSON.parse(stdout) as PushedZstd['manifest'] };
}

function zlibGunzip(data: Buffer): Buffer {
  return gunzipSync(data);
}
