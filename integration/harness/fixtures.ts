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
