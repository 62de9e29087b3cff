/**
 * Push, save/load and import end to end, through the ImageService directly (no daemon), against
 * Debian's docker-registry (distribution 2.8) with fixture images our harness builds and skopeo
 * pushes. skopeo also serves as an independent reader and writer of docker-archive and OCI
 * archives. Needs root (layer ownership, whiteout device nodes, trusted.* xattrs) and fails —
 * never skips — when docker-registry, skopeo or setfattr are missing.
 */
import { execFile } from 'node:child_process';
import { createReadStream, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import { UnauthorizedError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService, type ImageServiceDeps } from '../images/image-service';
import type { PushProgress } from '../images/types';
import { buildTar, pushBusybox, pushMultiLayer, type PushedImage } from './harness/fixtures';
import { requireCommand, startRegistry, type RunningRegistry } from './harness/registry';

const execFileAsync = promisify(execFile);

let base: string;
const cleanups: Array<() => Promise<void>> = [];

async function newService(extra: Partial<ImageServiceDeps> = {}): Promise<CapsuleImageService> {
  const svc = createImageService({
    root: await fs.mkdtemp(path.join(base, 'root-')),
    log: createSilentLogger(),
    ...extra,
  });
  await svc.ready();
  return svc;
}

async function push(
  svc: CapsuleImageService,
  ref: string,
  options: Parameters<CapsuleImageService['push']>[1] = {},
): Promise<{ events: PushProgress[]; lines: string[] }> {
  const events: PushProgress[] = [];
  await svc.push(ref, options, (p) => events.push(p));
  const lines = events
    .filter((e) => 'status' in e && e.status !== 'Pushing')
    .map((e) => ('status' in e ? (e.id ? `${e.id}: ${e.status}` : e.status) : ''));
  return { events, lines };
}

/** Relative path → "type mode uid:gid size-or-target" of every entry under `dir`, sorted. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await fs.readdir(path.join(dir, rel))).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = await fs.lstat(path.join(dir, r));
      const kind = st.isDirectory()
        ? 'd'
        : st.isSymbolicLink()
          ? 'l'
          : st.isCharacterDevice()
            ? 'c'
            : st.isFIFO()
              ? 'p'
              : 'f';
      const detail = st.isSymbolicLink()
        ? await fs.readlink(path.join(dir, r))
        : st.isFile()
          ? String(st.size)
          : '';
      out.push(`${kind} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${r} ${detail}`);
      if (st.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out;
}

async function saveToFile(svc: CapsuleImageService, names: string[], file: string): Promise<void> {
  await pipeline(await svc.save(names), (await fs.open(file, 'w')).createWriteStream());
}

async function skopeo(args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync('skopeo', args, { timeout: 120_000 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`skopeo ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the push/save integration tests need root');
  await requireCommand('docker-registry', 'docker-registry');
  await requireCommand('skopeo', 'skopeo');
  await requireCommand('setfattr', 'attr');
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-push-it-'));
  await fs.writeFile(
    path.join(base, 'policy.json'),
    JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }),
  );
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  if (base) await fs.rm(base, { recursive: true, force: true });
});

describe('push to docker-registry', () => {
  let registry: RunningRegistry;
  let busybox: PushedImage;
  let multi: PushedImage;

  before(async () => {
    registry = await startRegistry();
    cleanups.push(() => registry.stop());
    busybox = await pushBusybox(registry.host);
    multi = await pushMultiLayer(registry.host);
  });

  it('pushes a pulled image to another repository (layers mounted), and a second root pulls it back', async () => {
    const svc = await newService();
    const record = await svc.pull(multi.reference, {}, () => undefined);
    await svc.tag(multi.reference, `${registry.host}/copies/multi`, 'v1');
    const { lines, events } = await push(svc, `${registry.host}/copies/multi:v1`);
    assert.equal(lines[0], `The push refers to repository [${registry.host}/copies/multi]`);
    const diffIDs = record.config.rootfs.diff_ids;
    const topFirst = [...new Set(diffIDs)].reverse().map((d) => d.slice(7, 19));
    assert.deepEqual(
      lines.slice(1, 1 + topFirst.length),
      topFirst.map((id) => `${id}: Preparing`),
    );
    // gzip layers exist in the source repository: mounted. The fixture's plain-tar layer has no
    // gzip blob there: compressed here and pushed.
    for (const l of multi.image.layers) {
      const id = l.diffID.slice(7, 19);
      const expected = l.mediaType.endsWith('+gzip') ? `${id}: Mounted from multi` : `${id}: Pushed`;
      assert.ok(lines.includes(expected), `${expected}\n${lines.join('\n')}`);
    }
    const aux = events.at(-1);
    assert.ok(aux !== undefined && 'aux' in aux);
    assert.equal(lines.at(-1), `v1: digest: ${aux.aux.Digest} size: ${aux.aux.Size}`);

    // What the registry stored is a Docker schema2 manifest skopeo reads, with our digest.
    const raw = await skopeo([
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${registry.host}/copies/multi:v1`,
    ]);
    const manifest = JSON.parse(raw) as { mediaType: string; config: { digest: string } };
    assert.equal(manifest.mediaType, 'application/vnd.docker.distribution.manifest.v2+json');
    assert.equal(manifest.config.digest, record.id);

    const other = await newService();
    const back = await other.pull(`${registry.host}/copies/multi:v1`, {}, () => undefined);
    assert.equal(back.id, record.id);
    assert.deepEqual(back.repoDigests, [`${registry.host}/copies/multi@${aux.aux.Digest}`]);
    const [mine, theirs] = [await svc.layerDirs(record), await other.layerDirs(back)];
    for (const [i, dir] of mine.entries())
      assert.deepEqual(await tree(theirs[i] ?? ''), await tree(dir), `layer ${i}`);
  });

  it('pushes an imported image with chunked and with monolithic uploads; both pull back identical', async () => {
    const rootfs = await buildTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/hello', content: 'hello from import\n' },
      { name: 'bin/', type: 'directory' },
      { name: 'bin/run', content: '#!/bin/sh\n', mode: 0o755 },
    ]);
    for (const uploadMode of ['chunked', 'monolithic'] as const) {
      const svc = await newService({ uploadMode });
      const record = await svc.import(Readable.from([zlib.gzipSync(rootfs)]), {
        repository: `${registry.host}/imported-${uploadMode}:v1`,
        changes: ['CMD ["/bin/run"]', 'ENV A=1'],
      });
      const { lines } = await push(svc, `${registry.host}/imported-${uploadMode}:v1`);
      assert.equal(lines[2], `${record.config.rootfs.diff_ids[0]?.slice(7, 19)}: Pushed`, lines.join('\n'));
      const again = await push(svc, `${registry.host}/imported-${uploadMode}:v1`);
      assert.ok(again.lines[2]?.endsWith(': Layer already exists'));
      const other = await newService();
      const back = await other.pull(`${registry.host}/imported-${uploadMode}:v1`, {}, () => undefined);
      assert.equal(back.id, record.id);
      assert.deepEqual(back.config.config?.Cmd, ['/bin/run']);
      const [dir] = await other.layerDirs(back);
      assert.equal(await fs.readFile(path.join(dir ?? '', 'etc/hello'), 'utf8'), 'hello from import\n');
    }
  });

  it('reports an unknown tag after the first line', async () => {
    const svc = await newService();
    await svc.pull(busybox.reference, {}, () => undefined);
    const events: PushProgress[] = [];
    await assert.rejects(
      svc.push(`${registry.host}/busybox:nope`, {}, (p) => events.push(p)),
      new RegExp(`tag does not exist: ${registry.host}/busybox:nope`),
    );
    assert.equal(events.length, 1);
  });
});

describe('push to docker-registry with htpasswd basic auth', () => {
  const creds = { user: 'alice', password: 'wonderland' };
  let registry: RunningRegistry;

  before(async () => {
    registry = await startRegistry({ htpasswd: creds });
    cleanups.push(() => registry.stop());
  });

  it('without credentials: UnauthorizedError; with them: pushed and readable', async () => {
    const svc = await newService();
    const record = await svc.import(Readable.from([await buildTar([{ name: 'f', content: 'secret\n' }])]), {
      repository: `${registry.host}/private:v1`,
    });
    await assert.rejects(
      svc.push(`${registry.host}/private:v1`, {}, () => undefined),
      (e: unknown) => {
        return e instanceof UnauthorizedError && /no basic auth credentials/.test(e.message);
      },
    );
    const { lines } = await push(svc, `${registry.host}/private:v1`, {
      auth: { username: creds.user, password: creds.password, serveraddress: registry.host },
    });
    assert.match(lines.at(-1) ?? '', /^v1: digest: sha256:[a-f0-9]{64} size: \d+$/);
    const raw = await skopeo([
      'inspect',
      '--raw',
      '--tls-verify=false',
      '--creds',
      `${creds.user}:${creds.password}`,
      `docker://${registry.host}/private:v1`,
    ]);
    assert.equal((JSON.parse(raw) as { config: { digest: string } }).config.digest, record.id);
  });
});

describe('save, load and import with real archives', () => {
  let registry: RunningRegistry;
  let multi: PushedImage;

  before(async () => {
    registry = await startRegistry();
    cleanups.push(() => registry.stop());
    multi = await pushMultiLayer(registry.host, 'multi', 'v1');
  });

  it('save → load round trip of a multi-layer image (whiteouts, links, owners) into a second root', async () => {
    const svc = await newService();
    const record = await svc.pull(multi.reference, {}, () => undefined);
    const file = path.join(base, 'multi.tar');
    await saveToFile(svc, [multi.reference], file);
    // skopeo reads our docker-archive.
    const inspected = JSON.parse(await skopeo(['inspect', '--raw', `docker-archive:${file}`])) as {
      config: { digest: string };
      layers: unknown[];
    };
    assert.equal(inspected.config.digest, record.id);
    assert.equal(inspected.layers.length, record.config.rootfs.diff_ids.length);

    const other = await newService();
    const lines: string[] = [];
    await other.load(createReadStream(file), { quiet: true }, (p) => 'stream' in p && lines.push(p.stream));
    assert.deepEqual(lines, [`Loaded image: ${multi.reference}\n`]);
    const loaded = await other.get(multi.reference);
    assert.equal(loaded.id, record.id);
    const [mine, theirs] = [await svc.layerDirs(record), await other.layerDirs(loaded)];
    assert.equal(theirs.length, mine.length);
    for (const [i, dir] of mine.entries())
      assert.deepEqual(await tree(theirs[i] ?? ''), await tree(dir), `layer ${i}`);
  });

  it('loads the docker-archive and OCI archives skopeo writes', async () => {
    const dockerArchive = path.join(base, 'skopeo-docker.tar');
    const ociArchive = path.join(base, 'skopeo-oci.tar');
    const policy = ['--policy', path.join(base, 'policy.json')];
    await skopeo([
      ...policy,
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      `docker://${multi.reference}`,
      `docker-archive:${dockerArchive}:skopeo/multi:d`,
    ]);
    await skopeo([
      ...policy,
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      `docker://${multi.reference}`,
      `oci-archive:${ociArchive}:skopeo/multi:o`,
    ]);
    const svc = await newService();
    const lines: string[] = [];
    const onProgress = (p: Parameters<Parameters<CapsuleImageService['load']>[2]>[0]): void => {
      if ('stream' in p) lines.push(p.stream);
    };
    await svc.load(createReadStream(dockerArchive), { quiet: true }, onProgress);
    await svc.load(createReadStream(ociArchive), { quiet: false }, onProgress);
    assert.equal(lines[0], 'Loaded image: skopeo/multi:d\n');
    // skopeo's OCI archive names the image by org.opencontainers.image.ref.name "skopeo/multi:o".
    assert.equal(lines[1], 'Loaded image: skopeo/multi:o\n');
    const [d, o] = [await svc.get('skopeo/multi:d'), await svc.get('skopeo/multi:o')];
    assert.equal(d.id, multi.image.configDigest);
    assert.equal(o.id, multi.image.configDigest);
  });

  it('import a gzip rootfs with changes, then save and load it back', async () => {
    const rootfs = await buildTar([
      { name: 'data/', type: 'directory', mode: 0o750, uid: 1000, gid: 1000 },
      { name: 'data/file', content: 'imported\n', uid: 1000, gid: 1000, mode: 0o640 },
      { name: 'data/link', type: 'symlink', linkname: 'file' },
    ]);
    const svc = await newService();
    const record = await svc.import(Readable.from([zlib.gzipSync(rootfs)]), {
      repository: 'imported',
      tag: 'it',
      changes: ['WORKDIR /data', 'USER 1000', 'ENTRYPOINT ["cat"]', 'CMD ["file"]', 'EXPOSE 8080'],
      message: 'integration import',
    });
    assert.deepEqual(record.repoTags, ['imported:it']);
    assert.equal(record.config.config?.WorkingDir, '/data');
    assert.deepEqual(record.config.config?.ExposedPorts, { '8080/tcp': {} });
    const [dir] = await svc.layerDirs(record);
    const st = await fs.lstat(path.join(dir ?? '', 'data/file'));
    assert.equal(st.uid, 1000);
    assert.equal(st.mode & 0o777, 0o640);
    const file = path.join(base, 'imported.tar');
    await saveToFile(svc, ['imported:it'], file);
    const other = await newService();
    await other.load(createReadStream(file), {}, () => undefined);
    const loaded = await other.get('imported:it');
    assert.equal(loaded.id, record.id);
    assert.equal(loaded.config.comment, 'integration import');
    assert.deepEqual(await tree((await other.layerDirs(loaded))[0] ?? ''), await tree(dir ?? ''));
  });
});
