/**
 * The real docker CLI (28.x) against the API on a temp socket, backed by the fakes. Skipped when
 * the CLI is not installed.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dockerCliMissing, runDockerCli, type CliResult } from './testing/cli';
import { BUSYBOX, startHarness, type Harness } from './testing/harness';

const skip = dockerCliMissing;

let h: Harness;
let configDir: string;

function docker(args: string[], input?: string): Promise<CliResult> {
  return runDockerCli({ socketPath: h.socketPath, configDir }, args, { input, timeoutMs: 8000 });
}

describe('docker CLI', { skip }, () => {
  before(async () => {
    h = await startHarness({
      images: [BUSYBOX],
      registry: [{ ref: 'alpine:3.19', config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/bin/sh'] } }],
    });
    configDir = path.join(h.dir, 'docker-config');
    await fs.mkdir(configDir);
  });
  after(async () => {
    await h.close();
  });

  it('docker version shows Capsule and API 1.43', async () => {
    const r = await docker(['version']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Server: Capsule \S+/);
    assert.match(r.stdout, /API version:\s+1\.43 \(minimum version 1\.24\)/);
    assert.match(r.stdout, /Accel:\s+tcg/);
  });

  it('docker run --rm propagates the exit code and separates stdout from stderr', async () => {
    const r = await docker(['run', '--rm', 'busybox', 'sh', '-c', 'echo to-out; echo to-err >&2; exit 3']);
    assert.equal(r.code, 3);
    assert.equal(r.stdout, 'to-out\n');
    assert.equal(r.stderr, 'to-err\n');
    const ps = await docker(['ps', '-aq']);
    assert.equal(ps.stdout, '', 'the --rm container is gone');
  });

  it('docker run -i delivers piped stdin (sent before start) and closes it', async () => {
    const r = await docker(['run', '-i', '--rm', 'busybox', 'cat'], 'line1\nline2\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'line1\nline2\n');
  });

  it('docker run -d, ps, logs, inspect, stop, kill, rm -f', async () => {
    const run = await docker([
      'run',
      '-d',
      '--name',
      'web',
      'busybox',
      'sh',
      '-c',
      'echo hello-log; sleep 100',
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^[0-9a-f]{64}\n$/);
    const ps = await docker(['ps', '--format', '{{.Names}}|{{.Status}}|{{.Command}}']);
    assert.match(ps.stdout, /^web\|Up (Less than a second|\d+ seconds?)\|"sh -c 'echo hello-l…"\n$/);
    let logs = await docker(['logs', 'web']);
    for (let i = 0; i < 50 && logs.stdout === ''; i++) logs = await docker(['logs', 'web']);
    assert.equal(logs.stdout, 'hello-log\n');
    const inspect = await docker([
      'inspect',
      '--format',
      '{{.State.Status}} {{.Config.Hostname}} {{.Name}}',
      'web',
    ]);
    assert.equal(inspect.stdout, `running ${run.stdout.slice(0, 12)} /web\n`);
    const stop = await docker(['stop', '-t', '1', 'web']);
    assert.equal(stop.code, 0);
    assert.equal(stop.stdout, 'web\n');
    const exited = await docker(['ps', '-a', '--filter', 'name=web', '--format', '{{.Status}}']);
    assert.match(exited.stdout, /^Exited \(143\) (Less than a second|\d+ seconds?) ago\n$/);
    const kill = await docker(['kill', 'web']);
    assert.equal(kill.code, 1);
    assert.match(kill.stderr, /Cannot kill container: web: Container [0-9a-f]{64} is not running/);
    await docker(['start', 'web']);
    const killed = await docker(['kill', 'web']);
    assert.equal(killed.code, 0, killed.stderr);
    assert.equal((await docker(['inspect', '--format', '{{.State.ExitCode}}', 'web'])).stdout, '137\n');
    await docker(['start', 'web']);
    const rm = await docker(['rm', 'web']);
    assert.equal(rm.code, 1);
    assert.match(
      rm.stderr,
      /You cannot remove a running container [0-9a-f]{64}\. Stop the container before attempting removal or force remove/,
    );
    const rmf = await docker(['rm', '-f', 'web']);
    assert.equal(rmf.code, 0, rmf.stderr);
    assert.equal((await docker(['ps', '-aq', '--filter', 'name=web'])).stdout, '');
  });

  it('name conflict is reported as dockerd does', async () => {
    assert.equal((await docker(['create', '--name', 'dup', 'busybox', 'true'])).code, 0);
    const r = await docker(['create', '--name', 'dup', 'busybox', 'true']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /Conflict\. The container name "\/dup" is already in use by container "[0-9a-f]{64}"\./,
    );
    const created = await docker(['ps', '-a', '--filter', 'name=dup', '--format', '{{.Status}}']);
    assert.equal(created.stdout, 'Created\n');
  });

  it('a missing image makes the CLI pull it and retry the create', async () => {
    const r = await docker(['run', '--rm', 'alpine:3.19', 'echo', 'pulled-and-ran']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /Unable to find image 'alpine:3\.19' locally/);
    assert.match(r.stderr, /Status: Downloaded newer image for alpine:3\.19/);
    assert.equal(r.stdout, 'pulled-and-ran\n');
    assert.deepEqual(h.images.pulls, ['alpine:3.19']);
    const missing = await docker(['run', '--rm', 'nosuch:1', 'true']);
    assert.equal(missing.code, 125);
    assert.match(missing.stderr, /manifest for nosuch:1 not found/);
  });

  it("a command that cannot be exec'd fails like dockerd (127, 126)", async () => {
    const r = await docker(['run', '--rm', 'busybox', 'nosuch']);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /exec: "nosuch": executable file not found in \$PATH/);
    const n = await docker(['run', 'busybox', 'noexec']);
    assert.equal(n.code, 126);
  });

  it('docker wait, start -a and -t', async () => {
    assert.equal(
      (await docker(['run', '-d', '--name', 'w7', 'busybox', 'sh', '-c', 'sleep 0.2; exit 7'])).code,
      0,
    );
    const wait = await docker(['wait', 'w7']);
    assert.equal(wait.stdout, '7\n');
    assert.equal((await docker(['create', '--name', 'sa', 'busybox', 'echo', 'started-attached'])).code, 0);
    const sa = await docker(['start', '-a', 'sa']);
    assert.equal(sa.stdout, 'started-attached\n');
    const tty = await docker(['run', '--rm', '-t', 'busybox', 'sh', '-c', 'echo tty-out; echo tty-err >&2']);
    assert.equal(tty.stdout, 'tty-out\r\ntty-err\r\n');
  });

  it('unknown container errors are 404s the CLI understands', async () => {
    const r = await docker(['inspect', 'nosuch-at-all']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /No such object: nosuch-at-all/);
    const logs = await docker(['logs', 'nosuch-at-all']);
    assert.match(logs.stderr, /No such container: nosuch-at-all/);
  });
});
