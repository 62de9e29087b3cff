/**
 * docker cp (both ways), export, diff and commit through the docker CLI and dockerode against a
 * real capsuled whose containers run in QEMU micro-VMs. Expected outputs are what the reference
 * dockerd 20.10 gives for the same commands (shared/tools/reference-dockerd), except where a
 * hostile archive is rejected (dockerd confines it silently).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as tar from 'tar-stream';
import { runCli, type CliResult } from './harness/cli';
import { session, type Session } from './harness/session';
import { readTarEntries } from '../common/testing/tar';

let s: Session;
let work: string;
const docker = (args: string[], input?: string): Promise<CliResult> => runCli(s.cliEnv(), args, { input });
const suffix = `${process.pid}`;
const created: string[] = [];
const createdImages: string[] = [];

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

async function tarBuffer(
  entries: Array<{ name: string; body?: string; type?: 'file' | 'symlink'; linkname?: string }>,
): Promise<Buffer> {
  const pack = tar.pack();
  for (const { body, ...header } of entries) pack.entry(header, body ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as unknown as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

async function run(name: string, script: string): Promise<void> {
  created.push(name);
  ok(await docker(['run', '--name', name, s.busybox, 'sh', '-c', script]));
}

describe('docker cp, export, diff, commit against capsuled', () => {
  before(async () => {
    s = await session();
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-cp-'));
    ok(await docker(['pull', '-q', s.busybox]));
  });
  after(async () => {
    for (const name of created) await docker(['rm', '-f', name]);
    for (const image of createdImages) await docker(['rmi', '-f', image]);
    await fs.rm(work, { recursive: true, force: true });
    await s.close();
  });

  it('cp into a created container, then start and cat it', async () => {
    const name = `cp-created-${suffix}`;
    created.push(name);
    ok(await docker(['create', '--name', name, s.busybox, 'cat', '/tmp/cpfile.txt']));
    const file = path.join(work, 'cpfile.txt');
    await fs.writeFile(file, 'hello-cp\n');
    ok(await docker(['cp', file, `${name}:/tmp/`]));
    const r = await docker(['start', '-a', name]);
    assert.equal(ok(r), 'hello-cp\n');
  });

  it("HEAD/GET of a missing path is 404 with dockerd's message", async () => {
    const name = `cp-created-${suffix}`;
    const r = await docker(['cp', `${name}:/nonexist`, work]);
    assert.notEqual(r.code, 0);
    assert.match(
      r.stderr,
      new RegExp(`Error response from daemon: Could not find the file /nonexist in container ${name}`),
    );
  });

  it('cp out of a stopped container (file, directory, contents with "/.")', async () => {
    const name = `cp-stopped-${suffix}`;
    await run(name, 'mkdir -p /data/sub && echo one > /data/one && echo two > /data/sub/two');
    ok(await docker(['cp', `${name}:/data/one`, path.join(work, 'one-out')]));
    assert.equal(await fs.readFile(path.join(work, 'one-out'), 'utf8'), 'one\n');
    const entries = await readTarEntries(await s.docker.getContainer(name).getArchive({ path: '/data' }));
    assert.deepEqual(entries.map((e) => e.name).sort(), ['data/', 'data/one', 'data/sub/', 'data/sub/two']);
    const contents = await readTarEntries(await s.docker.getContainer(name).getArchive({ path: '/data/.' }));
    assert.ok(
      contents.some((e) => e.name === './sub/two'),
      JSON.stringify(contents.map((e) => e.name)),
    );
  });

  it('a directory holding a symlink to / is copied with the link, not what it points to', async () => {
    const name = `cp-escape-${suffix}`;
    await run(name, 'mkdir -p /tmp/d && ln -s / /tmp/d/escape && ln -s /../../../../../.. /tmp/up');
    const entries = await readTarEntries(await s.docker.getContainer(name).getArchive({ path: '/tmp/d' }));
    assert.deepEqual(
      entries.map((e) => [e.name, e.type, e.linkname]),
      [
        ['d/', 'directory', ''],
        ['d/escape', 'symlink', '/'],
      ],
    );
    // A path through the planted links resolves inside the container, never on the host.
    const hostMarker = path.join(work, 'host-marker');
    await fs.writeFile(hostMarker, 'host');
    const r = await docker(['cp', `${name}:/tmp/up${hostMarker}`, path.join(work, 'leak')]);
    assert.notEqual(r.code, 0, 'a host file must not be reachable through a container symlink');
    assert.match(r.stderr, /Could not find the file/);
    // Copying into the link writes inside the container's root.
    const file = path.join(work, 'into-link.txt');
    await fs.writeFile(file, 'inside\n');
    ok(await docker(['cp', file, `${name}:/tmp/up/`]));
    await assert.rejects(fs.access(path.join('/', 'into-link.txt')));
    const back = await readTarEntries(
      await s.docker.getContainer(name).getArchive({ path: '/into-link.txt' }),
    );
    assert.equal(back[0]?.body, 'inside\n');
  });

  it('PUT of a tar with a ../ entry is rejected and writes nothing', async () => {
    const name = `cp-escape-${suffix}`;
    const evil = await tarBuffer([{ name: '../../../../evil-cp.txt', body: 'pwn' }]);
    await assert.rejects(s.docker.getContainer(name).putArchive(evil, { path: '/tmp' }), (err: unknown) => {
      assert.equal((err as { statusCode?: number }).statusCode, 400);
      assert.match(String((err as Error).message), /outside of the extraction point/);
      return true;
    });
    const r = await docker(['cp', `${name}:/evil-cp.txt`, work]);
    assert.notEqual(r.code, 0);
  });

  it('PUT into a file is dockerd\'s "extraction point is not a directory"', async () => {
    const name = `cp-escape-${suffix}`;
    const good = await tarBuffer([{ name: 'x.txt', body: 'x' }]);
    await assert.rejects(
      s.docker.getContainer(name).putArchive(good, { path: '/bin/busybox' }),
      (err: unknown) => {
        assert.match(String((err as Error).message), /extraction point is not a directory/);
        return true;
      },
    );
  });

  it('cp both ways with a running container goes through the agent', async () => {
    const name = `cp-running-${suffix}`;
    created.push(name);
    ok(await docker(['run', '-d', '--name', name, s.busybox, 'sh', '-c', 'echo run > /tmp/live; sleep 600']));
    const file = path.join(work, 'to-running.txt');
    await fs.writeFile(file, 'to-running\n');
    ok(await docker(['cp', file, `${name}:/tmp/`]));
    ok(await docker(['cp', `${name}:/tmp/to-running.txt`, path.join(work, 'from-running.txt')]));
    assert.equal(await fs.readFile(path.join(work, 'from-running.txt'), 'utf8'), 'to-running\n');
    const head = (await s.docker.getContainer(name).infoArchive({ path: '/bin/sh' })) as unknown as {
      headers: Record<string, string>;
      resume(): void;
    };
    head.resume();
    const stat = JSON.parse(
      Buffer.from(head.headers['x-docker-container-path-stat'] ?? '', 'base64').toString(),
    ) as {
      name: string;
      linkTarget: string;
    };
    assert.deepEqual([stat.name, stat.linkTarget], ['sh', '/bin/busybox']);
    const names = (await readTarEntries(await s.docker.getContainer(name).export())).map((e) => e.name);
    assert.ok(names.includes('bin/busybox'), 'export of a running container lists bin/busybox');
    ok(await docker(['rm', '-f', name]));
  });

  it('export of a stopped container lists /bin/busybox', async () => {
    const name = `cp-stopped-${suffix}`;
    const names = (await readTarEntries(await s.docker.getContainer(name).export())).map((e) => e.name);
    assert.ok(names.includes('bin/busybox'), names.slice(0, 20).join(' '));
    assert.ok(names.includes('data/sub/two'));
  });

  it('commit of a stopped container (whiteout, --change, message), then run the new image', async () => {
    const name = `cp-commit-${suffix}`;
    await run(name, 'mkdir -p /opt/x && echo committed > /opt/x/c.txt && rm /bin/ls');
    const image = `capsule-committed-${suffix}:1`;
    createdImages.push(image);
    const id = ok(
      await docker([
        'commit',
        '-c',
        'ENV A=1',
        '-c',
        'CMD ["sh"]',
        '-m',
        'a message',
        '-a',
        'me',
        name,
        image,
      ]),
    ).trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    const r = await docker([
      'run',
      '--rm',
      image,
      'sh',
      '-c',
      'cat /opt/x/c.txt; echo A=$A; test -e /bin/ls && echo ls-present || echo ls-gone',
    ]);
    assert.equal(ok(r), 'committed\nA=1\nls-gone\n');
    const inspect = JSON.parse(ok(await docker(['image', 'inspect', image]))) as Array<{
      Comment: string;
      Author: string;
      Config: { Cmd: string[]; Env: string[] };
      RootFS: { Layers: string[] };
    }>;
    assert.equal(inspect[0]?.Comment, 'a message');
    assert.equal(inspect[0]?.Author, 'me');
    assert.deepEqual(inspect[0]?.Config.Cmd, ['sh']);
    assert.ok(inspect[0]?.Config.Env.includes('A=1'));
    const history = ok(await docker(['history', '--format', '{{.Comment}}', image])).split('\n');
    assert.equal(history[0], 'a message');
  });

  it('commit of a running container pauses it and keeps it running', async () => {
    const name = `cp-commit-run-${suffix}`;
    created.push(name);
    ok(
      await docker(['run', '-d', '--name', name, s.busybox, 'sh', '-c', 'echo live > /live.txt; sleep 600']),
    );
    const image = `capsule-committed-${suffix}:2`;
    createdImages.push(image);
    let copied: CliResult | undefined;
    for (let i = 0; i < 50; i++) {
      copied = await docker(['cp', `${name}:/live.txt`, '-']);
      if (copied.code === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.equal(copied?.code, 0, copied?.stderr);
    const since = String(Math.floor(Date.now() / 1000));
    const imageId = ok(await docker(['commit', '-m', 'live one', name, image])).trim();
    const state = ok(await docker(['inspect', '-f', '{{.State.Status}}', name])).trim();
    assert.equal(state, 'running');
    // dockerd's events for it, in its order: pause, the new name's tag, commit, unpause.
    const until = String(Math.ceil(Date.now() / 1000) + 1);
    const events = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--format',
        '{{.Type}} {{.Action}} {{json .Actor.Attributes}}',
      ]),
    )
      .trim()
      .split('\n')
      .filter((l) => /^(container (pause|commit|unpause)|image tag) /.test(l));
    const containerId = ok(await docker(['inspect', '-f', '{{.Id}}', name])).trim();
    assert.deepEqual(
      events.map((l) => l.split(' ').slice(0, 2).join(' ')),
      ['container pause', 'image tag', 'container commit', 'container unpause'],
      events.join('\n'),
    );
    const commitAttributes = JSON.parse(events[2]?.split(' ').slice(2).join(' ') ?? '{}') as Record<
      string,
      string
    >;
    assert.deepEqual(
      [commitAttributes.comment, commitAttributes.imageID, commitAttributes.imageRef, commitAttributes.name],
      ['live one', imageId, image, name],
    );
    assert.ok(containerId.length === 64);
    assert.equal(ok(await docker(['run', '--rm', image, 'cat', '/live.txt'])), 'live\n');
    ok(await docker(['rm', '-f', name]));
  });

  it('commit of an unknown container or with a bad reference fails as dockerd', async () => {
    const r = await docker(['commit', `nosuch-${suffix}`]);
    assert.match(r.stderr, new RegExp(`Error response from daemon: No such container: nosuch-${suffix}`));
    const bad = await s.docker
      .getContainer(`cp-commit-${suffix}`)
      .commit({ changes: 'FOO x' })
      .catch((e: unknown) => e);
    assert.match(String((bad as Error).message), /foo is not a valid change command/i);
  });

  it('leaves no container filesystem mounted on the host after the calls', async () => {
    const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mountinfo.includes(`${s.execRoot}/fs/`), 'an archive mount is left behind');
    const left = await fs.readdir(path.join(s.execRoot, 'fs')).catch(() => []);
    assert.deepEqual(left, []);
  });

  it('diff after touching and removing files', async () => {
    const name = `cp-diff-${suffix}`;
    await run(name, 'touch /tmp/new; rm /bin/ls');
    const lines = ok(await docker(['diff', name]))
      .trim()
      .split('\n');
    // dockerd's lines (in its walk order; Capsule sorts by path). /dev, /proc, /sys, which the OCI
    // runtime creates as mount points, are not listed (dockerd's init layer hides them).
    assert.deepEqual(lines.sort(), ['A /tmp/new', 'C /bin', 'C /tmp', 'D /bin/ls']);
  });
});
