/**
 * The unpacked rootfs of an image pulled by Capsule against the one the reference dockerd 20.10
 * (overlay2) makes of the same image from the same registry. Both sides are looked at the same
 * way: the image's layer dirs mounted as a read-only overlay (Capsule's from its image service,
 * dockerd's from `docker image inspect` GraphDriver data), then every entry's type, mode, owner,
 * size, link target, device numbers, mtime and hardlink group compared. Any difference fails.
 * dockerd's `docker export` of a created container is compared too (its init layer's paths set
 * aside), as the view a user of dockerd sees.
 *
 * Needs root; fails — never skips — when the reference dockerd cannot be started or
 * docker-registry, skopeo or the docker CLI are missing.
 */
import { execFile, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { describe, it, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as tar from 'tar-stream';
import { createSilentLogger } from '../common/logger';
import { createImageService, type CapsuleImageService } from '../images/image-service';
import {
  buildImage,
  buildLargeImage,
  buildMultiLayer,
  buildTar,
  gzipLayer,
  pushImage,
  type PushedImage,
} from './harness/fixtures';
import { requireCommand, startRegistry, type RunningRegistry } from './harness/registry';

const execFileAsync = promisify(execFile);
const REFERENCE_TOOL = process.env.CAPSULE_REFERENCE_DOCKERD ?? '/work/shared/tools/reference-dockerd';
const REFERENCE_DIR = process.env.CAPSULE_IT_REFERENCE_DIR ?? '/var/tmp/capsule-it-reference';
const refEnv = { ...process.env, DOCKER_HOST: `unix://${REFERENCE_DIR}/docker.sock` };

interface Entry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  link?: string;
  rdev?: string;
  mtime?: number;
  /** Other paths that are the same inode (hardlinks), sorted. */
  hardlinks?: string[];
}

function typeOf(st: import('node:fs').Stats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'unknown';
}

/** Every entry under `root`, keyed by its path relative to it ("" is the root itself). */
async function walk(root: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const inodes = new Map<string, string[]>();
  const visit = async (rel: string): Promise<void> => {
    const full = path.join(root, rel);
    const st = await fs.lstat(full);
    const type = typeOf(st);
    const entry: Entry = {
      type,
      mode: (st.mode & 0o7777).toString(8),
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
    };
    if (type === 'file') entry.size = st.size;
    if (type === 'symlink') entry.link = await fs.readlink(full);
    if (type === 'char' || type === 'block') entry.rdev = `${Math.floor(st.rdev / 256)}:${st.rdev % 256}`;
    if (type !== 'dir' && st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      inodes.set(key, [...(inodes.get(key) ?? []), rel]);
      entry.hardlinks = [key];
    }
    out.set(rel, entry);
    if (type === 'dir') {
      for (const name of (await fs.readdir(full)).sort()) await visit(rel === '' ? name : `${rel}/${name}`);
    }
  };
  await visit('');
  for (const entry of out.values()) {
    if (entry.hardlinks) entry.hardlinks = [...(inodes.get(entry.hardlinks[0] ?? '') ?? [])].sort();
  }
  return out;
}

/** The entries of a `docker export` tarball, in the same shape (hardlink groups by target name). */
async function walkTar(file: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const links = new Map<string, string[]>();
  const extract = tar.extract();
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const rel = header.name.replace(/^\.?\/+/, '').replace(/\/+$/, '');
      const types: Record<string, string> = {
        file: 'file',
        directory: 'dir',
        symlink: 'symlink',
        'character-device': 'char',
        'block-device': 'block',
        fifo: 'fifo',
        link: 'file',
      };
      const entry: Entry = {
        type: types[header.type ?? 'file'] ?? String(header.type),
        mode: ((header.mode ?? 0) & 0o7777).toString(8),
        uid: header.uid ?? 0,
        gid: header.gid ?? 0,
        mtime: Math.floor((header.mtime?.getTime() ?? 0) / 1000),
      };
      if (header.type === 'file') entry.size = header.size ?? 0;
      if (header.type === 'symlink') entry.link = header.linkname ?? '';
      if (header.type === 'character-device' || header.type === 'block-device') {
        entry.rdev = `${header.devmajor ?? 0}:${header.devminor ?? 0}`;
      }
      if (header.type === 'link') {
        const target = (header.linkname ?? '').replace(/^\.?\/+/, '');
        links.set(target, [...(links.get(target) ?? [target]), rel]);
        entry.hardlinks = [target];
      }
      out.set(rel, entry);
      stream.on('end', next);
      stream.resume();
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  (await fs.open(file)).createReadStream().pipe(extract);
  await done;
  for (const [target, group] of links) {
    const sorted = [...group].sort();
    const head = out.get(target);
    if (head) head.hardlinks = sorted;
    for (const rel of group) {
      const e = out.get(rel);
      if (!e) continue;
      e.hardlinks = sorted;
      // A hardlink entry carries no size or mode of its own in the tar: take the target's.
      if (head && rel !== target) Object.assign(e, { ...head, hardlinks: sorted });
    }
  }
  return out;
}

/** Human-readable differences between two trees (empty when they agree). */
function diffTrees(
  a: Map<string, Entry>,
  b: Map<string, Entry>,
  names: [string, string],
  ignore: (rel: string, field: string) => boolean = () => false,
): string[] {
  const out: string[] = [];
  for (const [rel, ea] of a) {
    const eb = b.get(rel);
    if (!eb) {
      if (!ignore(rel, 'presence')) out.push(`/${rel}: only in ${names[0]} (${ea.type})`);
      continue;
    }
    for (const field of [
      'type',
      'mode',
      'uid',
      'gid',
      'size',
      'link',
      'rdev',
      'mtime',
      'hardlinks',
    ] as const) {
      const va = JSON.stringify(ea[field]);
      const vb = JSON.stringify(eb[field]);
      if (va !== vb && !ignore(rel, field)) out.push(`/${rel}: ${field} ${names[0]}=${va} ${names[1]}=${vb}`);
    }
  }
  for (const [rel, eb] of b) {
    if (!a.has(rel) && !ignore(rel, 'presence')) out.push(`/${rel}: only in ${names[1]} (${eb.type})`);
  }
  return out;
}

async function withOverlay<T>(lowerTopFirst: string[], fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-ref-merged-'));
  // overlayfs wants two lower dirs when there is no upper dir: an empty one at the bottom is inert.
  const empty = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-ref-empty-'));
  await execFileAsync('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `ro,lowerdir=${[...lowerTopFirst, empty].join(':')}`,
    dir,
  ]);
  try {
    return await fn(dir);
  } finally {
    await execFileAsync('umount', [dir]);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.rm(empty, { recursive: true, force: true });
  }
}

async function docker(args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync('docker', args, {
      env: refEnv,
      timeout: 300_000,
      maxBuffer: 1 << 26,
    });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`reference docker ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`, {
      cause: err,
    });
  }
}

/** dockerd's overlay2 layer dirs of an image, top first. */
async function referenceLayerDirs(reference: string): Promise<string[]> {
  const data = JSON.parse(
    await docker(['image', 'inspect', '--format', '{{json .GraphDriver}}', reference]),
  ) as {
    Name: string;
    Data: { UpperDir?: string; LowerDir?: string };
  };
  assert.equal(data.Name, 'overlay2', 'the reference dockerd must use overlay2');
  const dirs = [data.Data.UpperDir ?? ''];
  if (data.Data.LowerDir) dirs.push(...data.Data.LowerDir.split(':'));
  return dirs;
}

/** Paths dockerd's init layer adds to every container (daemon/initlayer and the .dockerenv). */
const INIT_LAYER = new Set([
  '.dockerenv',
  'dev',
  'dev/console',
  'dev/pts',
  'dev/shm',
  'etc',
  'etc/hostname',
  'etc/hosts',
  'etc/mtab',
  'etc/resolv.conf',
  'proc',
  'sys',
]);

/**
 * Deliberate differences, each listed as diffTrees prints it so the test still fails on any other
 * and when one of these goes away. images/unpack.ts skips device nodes other than whiteouts (as
 * rootless dockerd does); rootful dockerd creates them.
 */
const KNOWN_DIFFERENCES = new Set([
  '/data/null: only in dockerd (char)',
  '/data/null: only in docker export (char)',
]);

function unexpected(differences: string[]): string[] {
  return differences.filter((d) => !KNOWN_DIFFERENCES.has(d));
}

let base: string;
let registry: RunningRegistry | undefined;
let svc: CapsuleImageService;

before(async () => {
  assert.equal(process.getuid?.(), 0, 'the reference comparison needs root (overlay mounts)');
  await requireCommand('docker-registry', 'docker-registry');
  await requireCommand('skopeo', 'skopeo');
  await requireCommand('docker', 'docker.io');
  const started = spawnSync(REFERENCE_TOOL, ['start', REFERENCE_DIR], { encoding: 'utf8', timeout: 120_000 });
  if (started.status !== 0 || !/reference dockerd/.test(started.stdout)) {
    throw new Error(
      `the reference dockerd could not be started (${REFERENCE_TOOL} start ${REFERENCE_DIR}): ` +
        `${started.stdout}${started.stderr}${started.error?.message ?? ''}`,
    );
  }
  const info = JSON.parse(
    await docker(['info', '--format', '{{json .RegistryConfig.InsecureRegistryCIDRs}}']),
  ) as string[];
  assert.ok(
    info.includes('127.0.0.0/8'),
    `reference dockerd must treat 127.0.0.0/8 as insecure: ${info.join(',')}`,
  );
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-ref-it-'));
  registry = await startRegistry();
  svc = createImageService({ root: path.join(base, 'root'), log: createSilentLogger() });
  await svc.ready();
});

after(async () => {
  await registry?.stop();
  spawnSync(REFERENCE_TOOL, ['stop', REFERENCE_DIR], { encoding: 'utf8', timeout: 60_000 });
  if (base) await fs.rm(base, { recursive: true, force: true });
});

/** Compares, fails on any unexpected difference, and returns the known ones it met. */
async function compareImage(pushed: PushedImage): Promise<string[]> {
  const reference = pushed.reference;
  await svc.pull(reference, {}, () => undefined);
  const capsuleDirs = (await svc.layerDirs(await svc.get(reference))).reverse();
  await docker(['pull', '-q', reference]);
  try {
    const refDirs = await referenceLayerDirs(reference);
    assert.equal(refDirs.length, capsuleDirs.length);
    const capsuleTree = await withOverlay(capsuleDirs, walk);
    const refTree = await withOverlay(refDirs, walk);
    assert.ok(capsuleTree.size > 10, `Capsule's tree is suspiciously small (${capsuleTree.size})`);
    // The root dir is overlayfs's empty bottom dir on both sides: nothing of the image.
    const differences = diffTrees(
      capsuleTree,
      refTree,
      ['capsule', 'dockerd'],
      (rel, field) => rel === '' && field === 'mtime',
    );
    assert.deepEqual(
      unexpected(differences),
      [],
      `rootfs differs from dockerd's:\n${differences.join('\n')}`,
    );

    // And against `docker export`, minus what dockerd's init layer adds or touches.
    const container = (await docker(['create', reference, 'true'])).trim();
    try {
      const exported = path.join(base, `export-${container.slice(0, 12)}.tar`);
      await docker(['export', '-o', exported, container]);
      const exportTree = await walkTar(exported);
      const exportDiffs = diffTrees(capsuleTree, exportTree, ['capsule', 'docker export'], (rel, field) => {
        if (rel === '') return true;
        if (INIT_LAYER.has(rel) && (field === 'presence' || field === 'mtime')) return true;
        return false;
      });
      assert.deepEqual(
        unexpected(exportDiffs),
        [],
        `rootfs differs from dockerd's export:\n${exportDiffs.join('\n')}`,
      );
      return differences.filter((d) => KNOWN_DIFFERENCES.has(d));
    } finally {
      await docker(['rm', '-f', container]);
    }
  } finally {
    await docker(['rmi', '-f', reference]).catch(() => '');
  }
}

describe('unpacked rootfs: Capsule vs the reference dockerd', () => {
  it('multi-layer fixture (whiteouts, opaque dir, links, owners, set-id bits, devices)', async () => {
    assert.ok(registry);
    // The fixture's last layer repeats a path within one tar, which dockerd 20.10 refuses
    // ("duplicates of file paths not supported", from tar-split) while Capsule, like containerd,
    // lets the later entry win. Compare with that layer minus the repeat.
    const multi = await buildMultiLayer();
    const last = gzipLayer(
      await buildTar([
        { name: './', type: 'directory', mode: 0o755 },
        { name: 'etc/', type: 'directory' },
        { name: 'etc/motd', content: 'layer four\n' },
        { name: '/abs/', type: 'directory' },
        { name: '/abs/file', content: 'confined\n' },
      ]),
    );
    const image = buildImage([...multi.layers.slice(0, 3), last], { Cmd: ['sh'], WorkingDir: '/data' });
    assert.deepEqual(await compareImage(await pushImage(registry.host, 'ref/multi', 'v1', image)), [
      '/data/null: only in dockerd (char)',
    ]);
  });

  it('large multi-layer image (many files, a layer replacing files of the one below)', async () => {
    assert.ok(registry);
    const image = await buildLargeImage({ layers: 3, layerBytes: 2 * 1024 * 1024, seed: 3 });
    assert.deepEqual(await compareImage(await pushImage(registry.host, 'ref/large', 'v1', image)), []);
  });
});
