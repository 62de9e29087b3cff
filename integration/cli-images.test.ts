/**
 * The images issue's user story through the real docker CLI against a real capsuled and real
 * registries (Debian's docker-registry): tag, images (filters, --digests), rmi (untag vs delete,
 * 409 in use), history, push and pull back, pull -a, save/load, import --change and from a URL,
 * pull --platform from a multi-arch index, login with htpasswd (push, and pull with the
 * credentials the CLI sends in X-Registry-Auth), system df, image prune, and a second daemon whose daemon.json sets registry-mirrors pulling
 * `busybox` (docker.io/library/busybox) from the mirror. Expected outputs are the reference
 * dockerd 20.10's for the same commands. No container is started: no VM is needed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCli, type CliResult } from './harness/cli';
import { TestDaemon } from './harness/daemon';
import { buildImage, buildTar, gzipLayer, pushBusybox, pushImage, pushMultiArch } from './harness/fixtures';
import { startRegistry, type RunningRegistry } from './harness/registry';
import { session, type Session } from './harness/session';

let s: Session;
let dir: string;
const docker = (args: string[], input?: string): Promise<CliResult> => runCli(s.cliEnv(), args, { input });

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

/** A tiny rootfs tarball for `docker import`. */
async function rootfsTar(name: string, content: string): Promise<string> {
  const file = path.join(dir, name);
  await fs.writeFile(
    file,
    await buildTar([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/marker', content },
    ]),
  );
  return file;
}

async function imageId(ref: string): Promise<string> {
  return ok(await docker(['image', 'inspect', '--format', '{{.Id}}', ref])).trim();
}

describe('docker image commands against capsuled', () => {
  before(async () => {
    s = await session();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-cli-images-'));
    ok(await docker(['pull', s.busybox]));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
    await s.close();
  });

  it('tag, then images with reference, dangling and label filters and --digests', async () => {
    assert.equal(ok(await docker(['tag', s.busybox, 'cli-images/bb:t1'])), '');
    const busyboxId = await imageId(s.busybox);
    assert.equal(await imageId('cli-images/bb:t1'), busyboxId);
    const byRef = ok(
      await docker(['images', '--format', '{{.Repository}}:{{.Tag}}', '--filter', 'reference=cli-images/*']),
    );
    assert.equal(byRef, 'cli-images/bb:t1\n');
    const digests = ok(
      await docker([
        'images',
        '--digests',
        '--format',
        '{{.Repository}} {{.Digest}}',
        `${s.registry}/busybox`,
      ]),
    );
    assert.match(digests, new RegExp(`^${s.registry}/busybox sha256:[0-9a-f]{64}\\n$`));
    // An image with a label (from import --change), then a second import taking its tag: the
    // first becomes dangling.
    const tar = await rootfsTar('labelled.tar', 'one');
    ok(await docker(['import', '-c', 'LABEL capsule.test=cli-images', tar, 'cli-images/labelled:1']));
    const firstId = await imageId('cli-images/labelled:1');
    ok(await docker(['import', tar, 'cli-images/labelled:1']));
    const labelled = ok(
      await docker(['images', '--no-trunc', '-q', '--filter', 'label=capsule.test=cli-images']),
    );
    assert.equal(labelled, `${firstId}\n`);
    const dangling = ok(
      await docker([
        'images',
        '--no-trunc',
        '--filter',
        'dangling=true',
        '--format',
        '{{.ID}} {{.Repository}}:{{.Tag}}',
      ]),
    );
    assert.match(dangling, new RegExp(`^${firstId} <none>:<none>$`, 'm'));
    const bad = await docker(['images', '--filter', 'dangling=maybe']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /Invalid filter 'dangling=\[maybe\]'/);
  });

  it('image prune removes the dangling image only', async () => {
    const firstId = ok(
      await docker(['images', '--no-trunc', '-q', '--filter', 'label=capsule.test=cli-images']),
    ).trim();
    const out = ok(await docker(['image', 'prune', '-f', '--filter', 'label=capsule.test=cli-images']));
    assert.match(out, new RegExp(`^Deleted Images:\\ndeleted: ${firstId}\\n`));
    assert.match(out, /Total reclaimed space: \S+\n$/);
    assert.equal(ok(await docker(['images', '-q', '--filter', 'label=capsule.test=cli-images'])), '');
    assert.notEqual(
      ok(await docker(['images', '-q', 'cli-images/labelled:1'])),
      '',
      'the tagged import stays',
    );
  });

  it('history lists the layers newest first, the top one with the image id', async () => {
    const out = ok(
      await docker(['history', '--no-trunc', '--format', '{{.ID}}|{{.CreatedBy}}|{{.Size}}', s.busybox]),
    );
    const rows = out.trim().split('\n');
    assert.ok(rows.length >= 1);
    assert.ok(rows[0]?.startsWith(`${await imageId(s.busybox)}|`), rows[0]);
    const missing = await docker(['history', 'cli-images/nosuch:1']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /No such image: cli-images\/nosuch:1/);
  });

  it('rmi untags a second name, refuses (409) an image a container uses, then deletes', async () => {
    assert.equal(ok(await docker(['rmi', 'cli-images/bb:t1'])), 'Untagged: cli-images/bb:t1\n');
    const tar = await rootfsTar('inuse.tar', 'in use');
    ok(await docker(['import', tar, 'cli-images/inuse:1']));
    const id = await imageId('cli-images/inuse:1');
    const cid = ok(
      await docker(['create', '--name', 'cli-images-user', 'cli-images/inuse:1', 'true']),
    ).trim();
    try {
      const refused = await docker(['rmi', 'cli-images/inuse:1']);
      assert.equal(refused.code, 1);
      assert.equal(
        refused.stderr,
        `Error response from daemon: conflict: unable to remove repository reference "cli-images/inuse:1" (must force) - container ${cid.slice(0, 12)} is using its referenced image ${id.slice(7, 19)}\n`,
      );
    } finally {
      ok(await docker(['rm', 'cli-images-user']));
    }
    // dockerd also lists the layer that went with it (its chain id).
    const removed = ok(await docker(['rmi', 'cli-images/inuse:1']));
    assert.match(
      removed,
      new RegExp(`^Untagged: cli-images/inuse:1\nDeleted: ${id}\nDeleted: sha256:[0-9a-f]{64}\n$`),
    );
    const missing = await docker(['rmi', 'cli-images/inuse:1']);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, 'Error response from daemon: No such image: cli-images/inuse:1\n');
  });

  it('push to the registry, then pull it back under that name after removing it', async () => {
    const target = `${s.registry}/cli-images/pushed:v1`;
    ok(await docker(['tag', s.busybox, target]));
    const push = ok(await docker(['push', target]));
    assert.match(push, new RegExp(`^The push refers to repository \\[${s.registry}/cli-images/pushed\\]\\n`));
    assert.match(push, /: (Pushed|Mounted from busybox|Layer already exists)\n/);
    assert.match(push, /v1: digest: sha256:[0-9a-f]{64} size: \d+\n$/);
    const digest = /digest: (sha256:[0-9a-f]{64})/.exec(push)?.[1];
    ok(await docker(['rmi', target]));
    const pull = ok(await docker(['pull', target]));
    assert.match(pull, new RegExp(`Digest: ${digest}`));
    assert.equal(await imageId(target), await imageId(s.busybox));
    ok(await docker(['rmi', target]));
  });

  it('save -o and load -i round trip an image', async () => {
    const tar = await rootfsTar('saved.tar', 'saved');
    ok(await docker(['import', tar, 'cli-images/saved:1']));
    const id = await imageId('cli-images/saved:1');
    const file = path.join(dir, 'saved-image.tar');
    assert.equal(ok(await docker(['save', '-o', file, 'cli-images/saved:1'])), '');
    assert.ok((await fs.stat(file)).size > 1024);
    ok(await docker(['rmi', 'cli-images/saved:1']));
    assert.equal(ok(await docker(['load', '-i', file])), 'Loaded image: cli-images/saved:1\n');
    assert.equal(await imageId('cli-images/saved:1'), id);
    ok(await docker(['rmi', 'cli-images/saved:1']));
  });

  it('import with --change and a message', async () => {
    const tar = await rootfsTar('imported.tar', 'imported');
    const out = ok(
      await docker([
        'import',
        '-c',
        'CMD ["/bin/sh"]',
        '-c',
        'ENV A=1',
        '-m',
        'from the test',
        tar,
        'cli-images/imported:1',
      ]),
    );
    assert.match(out, /^sha256:[0-9a-f]{64}\n$/);
    const inspect = ok(
      await docker([
        'image',
        'inspect',
        '--format',
        '{{json .Config.Cmd}} {{json .Config.Env}} {{.Comment}}',
        'cli-images/imported:1',
      ]),
    );
    assert.equal(inspect, '["/bin/sh"] ["A=1"] from the test\n');
    const bad = await docker(['import', '-c', 'RUN true', tar, 'cli-images/bad:1']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /run is not a valid change command/);
    ok(await docker(['rmi', 'cli-images/imported:1']));
  });

  it('pull -a pulls every tag: per-tag lines, one status for the repository, as dockerd 20.10', async () => {
    // v1 is the session's busybox (already here: no layer lines); v2 is a new image.
    const repo = `${s.registry}/cli-images/alltags`;
    const v1 = await pushBusybox(s.registry, 'cli-images/alltags', 'v1');
    const other = buildImage(
      [
        gzipLayer(
          await buildTar([
            { name: 'etc/', type: 'directory' },
            { name: 'etc/v2', content: 'v2\n' },
          ]),
        ),
      ],
      {
        Cmd: ['sh'],
      },
    );
    const v2 = await pushImage(s.registry, 'cli-images/alltags', 'v2', other);
    const layer = other.layers[0]?.digest.slice(7, 19) ?? '';
    const first = ok(await docker(['pull', '-a', repo]));
    assert.equal(
      first,
      [
        'v1: Pulling from cli-images/alltags',
        `Digest: ${v1.manifestDigest}`,
        'v2: Pulling from cli-images/alltags',
        `${layer}: Pulling fs layer`,
        `${layer}: Verifying Checksum`,
        `${layer}: Download complete`,
        `${layer}: Pull complete`,
        `Digest: ${v2.manifestDigest}`,
        `Status: Downloaded newer image for ${repo}`,
        repo,
        '',
      ].join('\n'),
    );
    assert.equal(await imageId(`${repo}:v1`), await imageId(s.busybox));
    assert.equal(await imageId(`${repo}:v2`), other.configDigest);
    const again = ok(await docker(['pull', '--all-tags', repo]));
    assert.match(
      again,
      new RegExp(
        `\nStatus: Image is up to date for ${repo.replace(/[.]/g, '\\.')}\n${repo.replace(/[.]/g, '\\.')}\n$`,
      ),
    );
    const tagged = await docker(['pull', '-a', `${repo}:v1`]);
    assert.equal(tagged.code, 1);
    assert.match(tagged.stderr, /tag can't be used with --all-tags\/-a/);
    ok(await docker(['rmi', `${repo}:v1`, `${repo}:v2`]));
  });

  it("import from an http URL downloads it with dockerd's lines and message", async () => {
    const tarball = await fs.readFile(await rootfsTar('served.tar', 'from the web'));
    const server = http.createServer((req, res) => {
      if (req.url === '/rootfs.tar') {
        res.writeHead(200, { 'content-length': tarball.length }).end(tarball);
        return;
      }
      res.writeHead(404, 'Not Found').end('nothing here\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const origin = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const out = ok(await docker(['import', `http://${origin}/rootfs.tar`, 'cli-images/fromurl:1']));
      const id = await imageId('cli-images/fromurl:1');
      assert.equal(out, `Downloading from http://${origin}/rootfs.tar\n${id}\n`);
      const comment = ok(
        await docker(['image', 'inspect', '--format', '{{.Comment}}', 'cli-images/fromurl:1']),
      );
      assert.equal(comment, `Imported from http://${origin}/rootfs.tar\n`);
      const missing = await docker(['import', `http://${origin}/nope.tar`]);
      assert.equal(missing.code, 1);
      assert.equal(
        missing.stderr,
        `Error response from daemon: failed to GET http://${origin}/nope.tar with status 404 Not Found: nothing here\n`,
      );
      ok(await docker(['rmi', 'cli-images/fromurl:1']));
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('pull --platform linux/arm64 of a multi-arch index pulls that platform; a default pull linux/amd64', async () => {
    const { reference, indexDigest, amd64, arm64 } = await pushMultiArch(
      s.registry,
      'cli-images/multiarch',
      'v1',
    );
    const platform = [
      'image',
      'inspect',
      '-f',
      '{{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}',
    ];
    try {
      const pulled = ok(await docker(['pull', '--platform', 'linux/arm64', reference]));
      assert.match(pulled, new RegExp(`^v1: Pulling from cli-images/multiarch\n`));
      assert.equal(await imageId(reference), arm64.configDigest);
      // As the reference dockerd 20.10 prints it for this fixture.
      assert.equal(ok(await docker([...platform, reference])), 'linux/arm64/v8\n');
      ok(await docker(['pull', reference]));
      assert.equal(await imageId(reference), amd64.configDigest);
      assert.equal(ok(await docker([...platform, reference])), 'linux/amd64\n');
      assert.equal(ok(await docker([...platform, arm64.configDigest])), 'linux/arm64/v8\n');
    } finally {
      await docker(['rmi', reference, `${s.registry}/cli-images/multiarch@${indexDigest}`]);
      await docker(['rmi', arm64.configDigest]);
    }
  });

  it('system df reports the images and their sizes', async () => {
    const out = ok(await docker(['system', 'df', '--format', '{{.Type}}|{{.TotalCount}}|{{.Size}}']));
    const images = out.split('\n').find((l) => l.startsWith('Images|'));
    assert.match(images ?? '', /^Images\|[1-9]\d*\|\d+(\.\d+)?[kMG]?B$/);
    assert.match(out, /^Local Volumes\|0\|0B$/m);
    const verbose = ok(await docker(['system', 'df', '-v']));
    assert.match(verbose, new RegExp(`${s.registry}/busybox +latest`));
  });
});

describe('docker login against a registry with htpasswd', () => {
  let registry: RunningRegistry;
  let configDir: string;
  const env = (): NodeJS.ProcessEnv => ({ ...s.cliEnv(), DOCKER_CONFIG: configDir });

  before(async () => {
    s = await session();
    registry = await startRegistry({ htpasswd: { user: 'alice', password: 'secret' } });
    configDir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-cli-login-'));
  });
  after(async () => {
    await registry.stop();
    await fs.rm(configDir, { recursive: true, force: true });
  });

  it('bad credentials are refused with dockerd text; good ones log in, and push then works', async () => {
    const target = `${registry.host}/cli-images/private:v1`;
    ok(await docker(['tag', s.busybox, target]));
    try {
      const anonymous = await runCli(env(), ['push', target]);
      assert.equal(anonymous.code, 1);
      assert.match(anonymous.stderr, /no basic auth credentials/);
      const bad = await runCli(env(), ['login', registry.host, '-u', 'alice', '--password-stdin'], {
        input: 'wrong\n',
      });
      assert.equal(bad.code, 1);
      assert.equal(
        bad.stderr.trim().split('\n').at(-1),
        `Error response from daemon: login attempt to http://${registry.host}/v2/ failed with status: 401 Unauthorized`,
      );
      const login = await runCli(env(), ['login', registry.host, '-u', 'alice', '--password-stdin'], {
        input: 'secret\n',
      });
      assert.equal(login.code, 0, login.stderr);
      assert.match(login.stdout, /Login Succeeded/);
      const push = await runCli(env(), ['push', target]);
      assert.equal(push.code, 0, push.stderr);
      assert.match(push.stdout, /v1: digest: sha256:[0-9a-f]{64}/);
      assert.equal((await runCli(env(), ['logout', registry.host])).code, 0);
    } finally {
      ok(await docker(['rmi', target]));
    }
  });
});

describe('docker pull from a registry with htpasswd: the credentials of docker login', () => {
  const creds = { user: 'alice', password: 'secret' };
  let registry: RunningRegistry;
  let anonymousDir: string;
  let loginDir: string;

  before(async () => {
    s = await session();
    registry = await startRegistry({ htpasswd: creds });
    // Private CLI config dirs: one never logged in, one for docker login (the host's untouched).
    anonymousDir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-cli-anon-'));
    loginDir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-cli-login-pull-'));
  });
  after(async () => {
    await registry.stop();
    await fs.rm(anonymousDir, { recursive: true, force: true });
    await fs.rm(loginDir, { recursive: true, force: true });
  });

  it("without login the pull fails with dockerd's text; after docker login it pulls (X-Registry-Auth)", async () => {
    const image = buildImage(
      [
        gzipLayer(
          await buildTar([
            { name: 'etc/', type: 'directory' },
            { name: 'etc/private', content: 'private\n' },
          ]),
        ),
      ],
      { Cmd: ['sh'] },
    );
    const pushed = await pushImage(registry.host, 'cli-images/private-pull', 'v1', image, { creds });
    const anonymous = { ...s.cliEnv(), DOCKER_CONFIG: anonymousDir };
    const loggedIn = { ...s.cliEnv(), DOCKER_CONFIG: loginDir };
    try {
      const refused = await runCli(anonymous, ['pull', pushed.reference]);
      assert.equal(refused.code, 1);
      // The reference dockerd 20.10's words for the same pull (its HEAD of the tag is refused).
      assert.equal(
        refused.stderr,
        `Error response from daemon: Head "http://${registry.host}/v2/cli-images/private-pull/manifests/v1": no basic auth credentials\n`,
      );
      assert.equal(refused.stdout, '');
      assert.equal((await runCli(anonymous, ['image', 'inspect', pushed.reference])).code, 1);

      const login = await runCli(loggedIn, ['login', registry.host, '-u', creds.user, '--password-stdin'], {
        input: `${creds.password}\n`,
      });
      assert.equal(login.code, 0, login.stderr);
      assert.match(login.stdout, /Login Succeeded/);
      const layer = image.layers[0]?.digest.slice(7, 19) ?? '';
      const pull = await runCli(loggedIn, ['pull', pushed.reference]);
      assert.equal(pull.code, 0, pull.stderr);
      assert.equal(
        pull.stdout,
        [
          'v1: Pulling from cli-images/private-pull',
          `${layer}: Pulling fs layer`,
          `${layer}: Verifying Checksum`,
          `${layer}: Download complete`,
          `${layer}: Pull complete`,
          `Digest: ${pushed.manifestDigest}`,
          `Status: Downloaded newer image for ${pushed.reference}`,
          pushed.reference,
          '',
        ].join('\n'),
      );
      assert.equal(await imageId(pushed.reference), image.configDigest);
      // The anonymous CLI config was never written to.
      assert.deepEqual(await fs.readdir(anonymousDir), []);
    } finally {
      await docker(['rmi', pushed.reference]);
      await runCli(loggedIn, ['logout', registry.host]);
    }
  });
});

describe('registry-mirrors from daemon.json', () => {
  let mirrored: TestDaemon;
  let configFile: string;
  const mdocker = (args: string[]): Promise<CliResult> => runCli(mirrored.cliEnv(), args);

  before(async () => {
    s = await session();
    // The session registry plays Docker Hub's mirror: it holds library/busybox.
    await pushBusybox(s.registry, 'library/busybox', 'latest');
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-it-mirror-'));
    configFile = path.join(base, 'daemon.json');
    await fs.writeFile(
      configFile,
      JSON.stringify({ 'registry-mirrors': [`http://${s.registry}`], accel: 'tcg', 'warm-pool': 0 }),
    );
    mirrored = await TestDaemon.start({ baseDir: base, args: ['--config-file', configFile] });
  });
  after(async () => {
    await mirrored?.cleanup(process.env.CAPSULE_IT_KEEP === '1');
  });

  it('docker info shows the mirror as dockerd does', async () => {
    const info = ok(await mdocker(['info', '--format', '{{json .RegistryConfig}}']));
    const config = JSON.parse(info) as {
      Mirrors: string[];
      IndexConfigs: Record<string, { Mirrors: string[] }>;
      InsecureRegistryCIDRs: string[];
    };
    assert.deepEqual(config.Mirrors, [`http://${s.registry}/`]);
    assert.deepEqual(config.IndexConfigs['docker.io']?.Mirrors, [`http://${s.registry}/`]);
    assert.deepEqual(config.InsecureRegistryCIDRs, ['127.0.0.0/8']);
  });

  it('docker pull busybox comes from the mirror', async () => {
    const pull = ok(await mdocker(['pull', 'busybox']));
    assert.match(pull, /latest: Pulling from library\/busybox/);
    assert.match(pull, /Status: Downloaded newer image for busybox:latest/);
    assert.match(pull, /docker\.io\/library\/busybox:latest/);
    const images = ok(await mdocker(['images', '--format', '{{.Repository}}:{{.Tag}}']));
    assert.equal(images, 'busybox:latest\n');
    const events = ok(
      await mdocker([
        'events',
        '--since',
        '0',
        '--until',
        String(Math.ceil(Date.now() / 1000) + 1),
        '--filter',
        'type=image',
        '--format',
        '{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}',
      ]),
    );
    assert.match(events, /^pull busybox:latest busybox$/m);
  });

  it('image prune -a deletes every unused image', async () => {
    const id = ok(await mdocker(['image', 'inspect', '--format', '{{.Id}}', 'busybox'])).trim();
    const out = ok(await mdocker(['image', 'prune', '-a', '-f']));
    assert.match(out, /^Deleted Images:\nuntagged: busybox:latest\nuntagged: busybox@sha256:[0-9a-f]{64}\n/);
    assert.match(out, new RegExp(`deleted: ${id}\\n`));
    assert.match(out, /Total reclaimed space: [1-9]/);
    assert.equal(ok(await mdocker(['images', '-q'])), '');
  });

  it('a conflicting flag and file value stops the daemon from starting, with dockerd text', async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-it-conflict-'));
    try {
      await assert.rejects(
        TestDaemon.start({
          baseDir: base,
          args: ['--config-file', configFile, '--registry-mirror', 'http://127.0.0.1:1'],
          startTimeoutMs: 20_000,
        }),
        /unable to configure the Capsule daemon with file .*daemon\.json: the following directives are specified both as a flag and in the configuration file: registry-mirrors: \(from flag: \[http:\/\/127\.0\.0\.1:1\], from file: \[http:\/\/127\.0\.0\.1:\d+\]\)/,
      );
      const missing = path.join(base, 'missing.json');
      await assert.rejects(
        TestDaemon.start({ baseDir: base, args: ['--config-file', missing], startTimeoutMs: 20_000 }),
        new RegExp(`open ${missing.replace(/[.]/g, '\\.')}: no such file or directory`),
      );
    } finally {
      await fs.rm(base, { recursive: true, force: true });
    }
  });
});
