import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { InvalidParameterError, NotFoundError, NotImplementedError } from '../common/errdefs';
import {
  MediaType,
  assertImageManifest,
  normalizePlatform,
  parseManifest,
  parsePlatform,
  selectManifest,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
} from './manifest';

const d = (n: number): string => 'sha256:' + n.toString(16).padStart(64, '0');

function entry(
  n: number,
  platform?: Descriptor['platform'],
  mediaType: string = MediaType.OciManifest,
): Descriptor {
  return { mediaType, digest: d(n), size: 100, ...(platform ? { platform } : {}) };
}

function index(...manifests: Descriptor[]): ImageIndex {
  return { kind: 'index', mediaType: MediaType.OciIndex, manifests };
}

describe('selectManifest', () => {
  const list = index(
    entry(1, { os: 'linux', architecture: 'arm', variant: 'v6' }),
    entry(2, { os: 'linux', architecture: 'arm', variant: 'v7' }),
    entry(3, { os: 'linux', architecture: 'arm64', variant: 'v8' }),
    entry(4, { os: 'windows', architecture: 'amd64' }),
    entry(5, { os: 'linux', architecture: 'amd64' }),
    entry(6, { os: 'unknown', architecture: 'unknown' }),
  );

  it('picks linux/amd64 by default', () => {
    assert.equal(selectManifest(list, parsePlatform(undefined)).digest, d(5));
  });

  it('honours os/arch/variant and the architecture default variant', () => {
    assert.equal(selectManifest(list, parsePlatform('linux/arm64')).digest, d(3));
    assert.equal(selectManifest(list, parsePlatform('linux/arm64/v8')).digest, d(3));
    assert.equal(selectManifest(list, parsePlatform('linux/arm')).digest, d(2));
    assert.equal(selectManifest(list, parsePlatform('linux/arm/v6')).digest, d(1));
    assert.equal(selectManifest(list, parsePlatform('windows/amd64')).digest, d(4));
    assert.equal(selectManifest(list, { os: 'linux', architecture: 'x86_64' }).digest, d(5));
  });

  it('fails like dockerd when nothing matches', () => {
    assert.throws(
      () => selectManifest(list, parsePlatform('linux/s390x')),
      (e: unknown) =>
        e instanceof NotFoundError &&
        e.message === 'no matching manifest for linux/s390x in the manifest list entries',
    );
    assert.throws(
      () => selectManifest(index(entry(6, { os: 'linux', architecture: 'arm64' })), parsePlatform(undefined)),
      /no matching manifest for linux\/amd64 in the manifest list entries/,
    );
    assert.throws(() => selectManifest(list, parsePlatform('linux/arm/v5')), NotFoundError);
  });

  it('ignores entries without a platform or that are not image manifests', () => {
    const l = index(entry(1), entry(2, { os: 'linux', architecture: 'amd64' }, MediaType.OciIndex));
    assert.throws(() => selectManifest(l, parsePlatform(undefined)), NotFoundError);
  });
});

describe('platforms', () => {
  it('normalises aliases', () => {
    assert.deepEqual(normalizePlatform({ os: 'Linux', architecture: 'aarch64' }), {
      os: 'linux',
      architecture: 'arm64',
      variant: 'v8',
    });
    assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'armhf' }), {
      os: 'linux',
      architecture: 'arm',
      variant: 'v7',
    });
  });

  it('rejects malformed platform strings', () => {
    assert.throws(() => parsePlatform('linux'), InvalidParameterError);
    assert.throws(() => parsePlatform('linux/amd64/v1/x'), InvalidParameterError);
    assert.throws(() => parsePlatform('linux/../x'), InvalidParameterError);
  });
});

describe('parseManifest', () => {
  const config = { mediaType: MediaType.DockerConfig, digest: d(1), size: 10 };
  const layer = { mediaType: MediaType.DockerLayerGzip, digest: d(2), size: 20 };

  it('parses Docker schema2 and OCI manifests and indexes', () => {
    const m = parseManifest(
      Buffer.from(
        JSON.stringify({ schemaVersion: 2, mediaType: MediaType.DockerManifest, config, layers: [layer] }),
      ),
    );
    assert.equal(m.kind, 'manifest');
    // OCI may omit mediaType: the Content-Type decides
    const o = parseManifest(
      Buffer.from(JSON.stringify({ schemaVersion: 2, config, layers: [] })),
      `${MediaType.OciManifest}; charset=utf-8`,
    );
    assert.equal(o.mediaType, MediaType.OciManifest);
    const i = parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [entry(3)] })));
    assert.equal(i.kind, 'index');
  });

  it('rejects schema 1, malformed documents and path-like digests', () => {
    assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":1}')), NotImplementedError);
    assert.throws(() => parseManifest(Buffer.from('nope')), InvalidParameterError);
    assert.throws(
      () =>
        parseManifest(
          Buffer.from(
            JSON.stringify({
              schemaVersion: 2,
              mediaType: MediaType.DockerManifest,
              config: { ...config, digest: 'sha256:../../../etc/passwd' },
              layers: [],
            }),
          ),
        ),
      InvalidParameterError,
    );
    assert.throws(
      () =>
        parseManifest(
          Buffer.from(
            JSON.stringify({
              schemaVersion: 2,
              mediaType: MediaType.DockerManifest,
              config,
              layers: [{ ...layer, size: -1 }],
            }),
          ),
        ),
      InvalidParameterError,
    );
  });

  it('refuses non-image artifacts', () => {
    const helm: ImageManifest = {
      kind: 'manifest',
      mediaType: MediaType.OciManifest,
      config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', digest: d(1), size: 1 },
      layers: [],
    };
    assert.throws(
      () => assertImageManifest(helm),
      /Encountered remote "application\/vnd.cncf.helm.config.v1\+json"/,
    );
  });
});
