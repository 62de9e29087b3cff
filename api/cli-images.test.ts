/**
 * The real docker CLI (28.x) driving the image routes on a temp socket, backed by the fakes:
 * what the user sees for tag, images, rmi, prune, history, login + push, save/load, import,
 * system df and image events. Skipped when the CLI is not installed (integration/cli-images
 * runs the same commands against the real image service and fails instead).
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dockerCliMissing, runDockerCli, type CliResult } from './testing/cli';
import { BUSYBOX, startHarness, type Harness } from './testing/harness';

const skip = dockerCliMissing;

let h: Harness;
let configDir: string;

function docker(args: string[], input?: string): Promise<CliResult> {
  return runDockerCli({ socketPath: h.socketPath, configDir }, args, { input, timeoutMs: 15000 });
}

/** A registry stand-in that only answers the login ping, with Basic auth for alice:secret. */
async function loginServer(): Promise<{ host: string; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.headers.authorization === `Basic ${Buffer.from('alice:secret').toString('base64')}`) {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' }).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('docker CLI: images', { skip }, () => {
  before(async () => {
    h = await startHarness({
      images: [BUSYBOX, { ref: 'labelled:1', config: { Cmd: ['sh'], Labels: { tier: 'web' } } }],
    });
    configDir = path.join(h.dir, 'docker-config');
    await fs.mkdir(configDir);
  });
  after(async () => {
    await h.close();
  });

  it('tag, then images with reference and label filters', async () => {
    const tag = await docker(['tag', 'busybox', 'mine/bb:v1']);
    assert.equal(tag.code, 0, tag.stderr);
    const ls = await docker([
      'images',
      '--format',
      '{{.Repository}}:{{.Tag}}',
      '--filter',
      'reference=mine/*',
    ]);
    assert.equal(ls.stdout, 'mine/bb:v1\n');
    const labelled = await docker(['images', '--format', '{{.Repository}}', '--filter', 'label=tier=web']);
    assert.equal(labelled.stdout, 'labelled\n');
    const bad = await docker(['images', '--filter', 'nope=1']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /Invalid filter 'nope'/);
  });

  it('history shows the image id, comment and size', async () => {
    const r = await docker(['history', '--no-trunc', '--format', '{{.ID}}|{{.Comment}}', 'busybox']);
    assert.equal(r.code, 0, r.stderr);
    const busybox = await h.images.get('busybox');
    assert.equal(r.stdout, `${busybox.id}|Imported from -\n`);
  });

  it('rmi untags while names remain, deletes with the last; 409 for an image in use', async () => {
    const untag = await docker(['rmi', 'mine/bb:v1']);
    assert.equal(untag.code, 0, untag.stderr);
    assert.equal(untag.stdout, 'Untagged: mine/bb:v1\n');
    const create = await docker(['create', '--name', 'user', 'labelled:1']);
    assert.equal(create.code, 0, create.stderr);
    const inUse = await docker(['rmi', 'labelled:1']);
    assert.equal(inUse.code, 1);
    assert.match(
      inUse.stderr,
      /^Error response from daemon: conflict: unable to remove repository reference "labelled:1" \(must force\) - container [0-9a-f]{12} is using its referenced image [0-9a-f]{12}\n$/,
    );
    assert.equal((await docker(['rm', 'user'])).code, 0);
    const labelled = await h.images.get('labelled:1');
    const rmi = await docker(['rmi', 'labelled:1']);
    assert.equal(rmi.stdout, `Untagged: labelled:1\nDeleted: ${labelled.id}\n`);
    const missing = await docker(['rmi', 'nosuch:1']);
    assert.match(missing.stderr, /No such image: nosuch:1/);
  });

  it('login stores credentials the CLI then sends with a push', async () => {
    const registry = await loginServer();
    try {
      const bad = await docker(['login', registry.host, '-u', 'alice', '--password-stdin'], 'wrong\n');
      assert.equal(bad.code, 1);
      assert.match(
        bad.stderr,
        new RegExp(`login attempt to http://${registry.host}/v2/ failed with status: 401 Unauthorized`),
      );
      const login = await docker(['login', registry.host, '-u', 'alice', '--password-stdin'], 'secret\n');
      assert.equal(login.code, 0, login.stderr);
      assert.match(login.stdout, /Login Succeeded/);
      assert.equal((await docker(['tag', 'busybox', `${registry.host}/bb:v1`])).code, 0);
      const push = await docker(['push', `${registry.host}/bb:v1`]);
      assert.equal(push.code, 0, push.stderr);
      assert.match(push.stdout, new RegExp(`The push refers to repository \\[${registry.host}/bb\\]`));
      assert.match(push.stdout, /v1: digest: sha256:[0-9a-f]{64} size: 527/);
      assert.deepEqual(h.images.pushes.at(-1), {
        ref: `${registry.host}/bb:v1`,
        auth: { username: 'alice', password: 'secret', serveraddress: registry.host },
      });
      assert.equal((await docker(['logout', registry.host])).code, 0);
    } finally {
      await registry.close();
    }
  });

  it('save -o and load -i round trip', async () => {
    const file = path.join(h.dir, 'bb.tar');
    const save = await docker(['save', '-o', file, 'busybox']);
    assert.equal(save.code, 0, save.stderr);
    assert.ok((await fs.stat(file)).size > 0);
    const load = await docker(['load', '-i', file]);
    assert.equal(load.code, 0, load.stderr);
    assert.equal(load.stdout, 'Loaded image: busybox:latest\n');
  });

  it('import with --change and a message', async () => {
    const file = path.join(h.dir, 'rootfs.tar');
    await fs.writeFile(file, 'rootfs bytes');
    const r = await docker(['import', '-c', 'CMD ["/bin/sh"]', '-m', 'from a test', file, 'imported:1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^sha256:[0-9a-f]{64}\n$/);
    const inspect = await docker([
      'image',
      'inspect',
      '--format',
      '{{json .Config.Cmd}}|{{.Comment}}',
      'imported:1',
    ]);
    assert.equal(inspect.stdout, '["/bin/sh"]|from a test\n');
  });

  it('system df counts images and their containers', async () => {
    assert.equal((await docker(['create', '--name', 'dfc', 'busybox'])).code, 0);
    try {
      const df = await docker(['system', 'df', '--format', '{{.Type}}|{{.TotalCount}}|{{.Active}}']);
      assert.equal(df.code, 0, df.stderr);
      const rows = df.stdout.trim().split('\n');
      assert.match(rows[0] ?? '', /^Images\|\d+\|1$/);
      assert.equal(rows[1], 'Containers|1|0');
      assert.equal(rows[2], 'Local Volumes|0|0');
      const verbose = await docker(['system', 'df', '-v']);
      assert.equal(verbose.code, 0, verbose.stderr);
      assert.match(verbose.stdout, /busybox +latest/);
    } finally {
      await docker(['rm', 'dfc']);
    }
  });

  it('image prune -a removes unused images and reports the space', async () => {
    const r = await docker(['image', 'prune', '-a', '-f']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^Deleted Images:\n/);
    assert.match(r.stdout, /untagged: busybox:latest\n/);
    assert.match(r.stdout, /Total reclaimed space: \S+/);
    const left = await docker(['images', '-q']);
    assert.equal(left.stdout, '');
    const again = await docker(['image', 'prune', '-a', '-f']);
    assert.equal(again.stdout, 'Total reclaimed space: 0B\n');
  });

  it('docker events shows the image events', async () => {
    const since = String(Math.floor(Date.now() / 1000) - 120);
    const until = String(Math.ceil(Date.now() / 1000) + 1);
    const r = await docker([
      'events',
      '--since',
      since,
      '--until',
      until,
      '--filter',
      'type=image',
      '--format',
      '{{.Action}}',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const actions = new Set(r.stdout.trim().split('\n'));
    for (const a of ['tag', 'untag', 'delete', 'push', 'save', 'load', 'import', 'prune']) {
      assert.ok(actions.has(a), `${a} in ${[...actions].join(',')}`);
    }
  });
});
