import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidParameterError } from '../common/errdefs';
import { isMounted, mountPointsOf, mountRootfs, overlayMountPlan, unmountRootfs } from './rootfs';

describe('overlayMountPlan', () => {
  it('lists the top layer first, with absolute paths when they fit', () => {
    const plan = overlayMountPlan(['/l/base', '/l/mid', '/l/top'], '/c/1');
    assert.equal(plan.options, 'lowerdir=/l/top:/l/mid:/l/base,upperdir=/c/1/upper,workdir=/c/1/work');
    assert.equal(plan.cwd, undefined);
    assert.deepEqual(plan.links, []);
    assert.deepEqual(plan.dirs, ['/c/1/upper', '/c/1/work']);
  });

  it('uses an empty lower dir for an image without layers', () => {
    const plan = overlayMountPlan([], '/c/1');
    assert.equal(plan.options, 'lowerdir=/c/1/empty,upperdir=/c/1/upper,workdir=/c/1/work');
    assert.ok(plan.dirs.includes('/c/1/empty'));
  });

  it('switches to short relative links when the options would not fit in a page', () => {
    const layers = Array.from(
      { length: 127 },
      (_, i) => `/var/lib/capsule/layers/sha256/${'a'.repeat(60)}${i}/fs`,
    );
    const plan = overlayMountPlan(layers, '/var/lib/capsule/containers/x');
    assert.equal(plan.cwd, '/var/lib/capsule/containers/x');
    assert.ok(plan.options.length < 4096);
    assert.ok(plan.options.startsWith('lowerdir=l/126:l/125:'));
    assert.ok(plan.options.endsWith(':l/0,upperdir=upper,workdir=work'));
    assert.deepEqual(plan.links[0], { link: '/var/lib/capsule/containers/x/l/0', target: layers[0] });
  });

  it('switches to links for paths overlay would misparse', () => {
    const plan = overlayMountPlan(['/l/a:b', '/l/c,d'], '/c/1');
    assert.equal(plan.options, 'lowerdir=l/1:l/0,upperdir=upper,workdir=work');
  });

  it('refuses relative layer dirs and impossible layer counts', () => {
    assert.throws(() => overlayMountPlan(['rel'], '/c'), InvalidParameterError);
    assert.throws(() => overlayMountPlan(['/a', '/b'], '/c', 20), InvalidParameterError);
  });
});

describe('mountPointsOf', () => {
  it('reads the mount point field and unescapes it', () => {
    const text =
      '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n' +
      '90 22 0:50 / /tmp/a\\040b rw - overlay overlay rw,lowerdir=/x\n';
    assert.deepEqual(mountPointsOf(text), ['/', '/tmp/a b']);
  });
});

// Real mounts need root (CAP_SYS_ADMIN); everything above runs anywhere.
const root = process.getuid?.() === 0;

describe('mountRootfs (root)', { skip: root ? false : 'needs root' }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rootfs-test-'));
  });
  after(async () => {
    for (const t of ['t1', 't2', 't3']) await unmountRootfs(path.join(dir, t)).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('stacks layers lowest first, writes to upper, and unmounts idempotently', async () => {
    const base = path.join(dir, 'base');
    const top = path.join(dir, 'top');
    mkdirSync(base);
    mkdirSync(top);
    writeFileSync(path.join(base, 'f'), 'base');
    writeFileSync(path.join(base, 'only-base'), 'b');
    writeFileSync(path.join(top, 'f'), 'top');
    const layer = path.join(dir, 'c1');
    const target = path.join(dir, 't1');
    await mountRootfs([base, top], layer, target);
    assert.ok(await isMounted(target));
    assert.equal(readFileSync(path.join(target, 'f'), 'utf8'), 'top');
    assert.equal(readFileSync(path.join(target, 'only-base'), 'utf8'), 'b');
    writeFileSync(path.join(target, 'new'), 'n');
    assert.equal(readFileSync(path.join(layer, 'upper', 'new'), 'utf8'), 'n');
    await assert.rejects(mountRootfs([base, top], layer, target), /already a mount point/);
    await unmountRootfs(target);
    assert.ok(!(await isMounted(target)));
    await unmountRootfs(target);
    // The writable layer survives a remount.
    await mountRootfs([base, top], layer, target);
    assert.equal(readFileSync(path.join(target, 'new'), 'utf8'), 'n');
    await unmountRootfs(target);
  });

  it('mounts an image without layers', async () => {
    const target = path.join(dir, 't2');
    await mountRootfs([], path.join(dir, 'c2'), target);
    writeFileSync(path.join(target, 'x'), 'x');
    await unmountRootfs(target);
    assert.ok(existsSync(path.join(dir, 'c2', 'upper', 'x')));
  });

  it('mounts many layers with long paths through short links', async () => {
    const layers: string[] = [];
    for (let i = 0; i < 100; i++) {
      const l = path.join(dir, 'layers', `${'d'.repeat(40)}-${String(i).padStart(3, '0')}`);
      mkdirSync(l, { recursive: true });
      writeFileSync(path.join(l, 'which'), String(i));
      layers.push(l);
    }
    const target = path.join(dir, 't3');
    await mountRootfs(layers, path.join(dir, 'c3'), target);
    assert.equal(readFileSync(path.join(target, 'which'), 'utf8'), '99');
    assert.equal(readlinkSync(path.join(dir, 'c3', 'l', '0')), layers[0]);
    await unmountRootfs(target);
  });
});
