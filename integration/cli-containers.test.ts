/**
 * The foundation issue's user story, through the real docker CLI against a real capsuled whose
 * containers run in QEMU micro-VMs, pulling from a real registry. Expected outputs are what the
 * reference dockerd 20.10 gives for the same commands (checked with shared/tools/reference-dockerd).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { session, type Session } from './harness/session';
import { runCli, type CliResult } from './harness/cli';
import { vmLeaks, vmRunDirOf } from './harness/leaks';
import { waitFor } from './harness/daemon';

let s: Session;
const docker = (args: string[], input?: string): Promise<CliResult> => runCli(s.cliEnv(), args, { input });

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

describe('docker CLI against capsuled', () => {
  before(async () => {
    s = await session();
  });
  after(async () => {
    await s.close();
  });

  it('docker version shows the Capsule server and negotiates the API version', async () => {
    const out = ok(await docker(['version']));
    assert.match(out, /Server: Capsule/);
    assert.match(out, /API version:\s+1\.43 \(minimum version 1\.24\)/);
    assert.match(out, /API version:\s+1\.43 \(downgraded from 1\.\d+\)/);
  });

  it('docker pull from the local registry prints progress and the digest', async () => {
    const r = await docker(['pull', s.busybox]);
    const out = ok(r);
    assert.match(out, /latest: Pulling from busybox/);
    assert.match(out, /Pull complete|Already exists/);
    assert.match(out, /Digest: sha256:[0-9a-f]{64}/);
    assert.match(out, new RegExp(`Status: (Downloaded newer image|Image is up to date) for ${s.busybox}`));
    const images = ok(await docker(['images', '--format', '{{.Repository}}:{{.Tag}}']));
    assert.match(images, new RegExp(`${s.registry}/busybox:latest`));
    const inspect = JSON.parse(ok(await docker(['image', 'inspect', s.busybox]))) as Array<{ Id: string }>;
    assert.match(inspect[0]?.Id ?? '', /^sha256:[0-9a-f]{64}$/);
  });

  it('docker run --rm prints the guest kernel release, passes stderr and exits with the code', async () => {
    const r = await docker(['run', '--rm', s.busybox, 'sh', '-c', 'uname -r; echo err >&2; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    const release = r.stdout.trim();
    assert.notEqual(release, os.release(), 'the container must see the guest kernel, not the host one');
    assert.match(release, /^6\.1\.\d+.*cloud-amd64$/);
    assert.equal(r.stderr.trim(), 'err');
    const all = ok(await docker(['ps', '-a', '--format', '{{.Image}} {{.Status}}']));
    assert.doesNotMatch(all, /uname/, '--rm container must be gone');
  });

  it('docker run --rm with -e, -w, -u and --entrypoint follows Docker semantics', async () => {
    const r = await docker([
      'run',
      '--rm',
      '-e',
      'A=1',
      '-w',
      '/tmp/work',
      '-u',
      '1000:1000',
      '--entrypoint',
      '/bin/sh',
      s.busybox,
      '-c',
      'echo "A=$A pwd=$(pwd) id=$(id -u):$(id -g)"',
    ]);
    assert.equal(ok(r).trim(), 'A=1 pwd=/tmp/work id=1000:1000');
  });

  it('an unknown command fails like dockerd: exit 127 and the executable named', async () => {
    const r = await docker(['run', '--rm', s.busybox, 'nosuchcmd']);
    assert.equal(r.code, 127, r.stderr);
    assert.match(r.stderr, /nosuchcmd/);
    assert.match(r.stderr, /executable file not found in \$PATH/);
  });

  it('run -d, ps, logs, inspect, stop, kill and rm -f behave as with dockerd', async () => {
    const name = `it-sleeper-${process.pid}`;
    let vm: { pid: number; runDir: string } | undefined;
    const id = ok(
      await docker(['run', '-d', '--name', name, s.busybox, 'sh', '-c', 'echo started; sleep 300']),
    ).trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    try {
      const ps = ok(await docker(['ps', '--format', '{{.ID}} {{.Names}} {{.Status}}']));
      assert.match(ps, new RegExp(`^${id.slice(0, 12)} ${name} Up `, 'm'));
      await waitFor(
        'log line',
        async () => (await docker(['logs', name])).stdout.includes('started'),
        60_000,
      );
      const inspect = JSON.parse(ok(await docker(['inspect', name]))) as Array<{
        Id: string;
        Name: string;
        State: { Running: boolean; Status: string; Pid: number };
        Config: { Cmd: string[]; Tty: boolean };
      }>;
      const c = inspect[0];
      assert.ok(c);
      assert.equal(c.Id, id);
      assert.equal(c.Name, `/${name}`);
      assert.equal(c.State.Status, 'running');
      assert.ok(c.State.Pid > 0);
      const runDir = await vmRunDirOf(c.State.Pid);
      assert.ok(runDir, `State.Pid ${c.State.Pid} is not a QEMU process`);
      vm = { pid: c.State.Pid, runDir };
      assert.deepEqual(c.Config.Cmd, ['sh', '-c', 'echo started; sleep 300']);

      // sh as PID 1 ignores SIGTERM, so stop waits -t then kills: exit 137, as with dockerd.
      ok(await docker(['stop', '-t', '1', name]));
      const stopped = JSON.parse(ok(await docker(['inspect', name]))) as Array<{
        State: { Status: string; ExitCode: number };
      }>;
      assert.equal(stopped[0]?.State.Status, 'exited');
      assert.equal(stopped[0]?.State.ExitCode, 137);
      const psa = ok(await docker(['ps', '-a', '--filter', `name=${name}`, '--format', '{{.Status}}']));
      assert.match(psa, /^Exited \(137\) /);

      const notRunning = await docker(['kill', name]);
      assert.equal(notRunning.code, 1);
      assert.match(notRunning.stderr, /is not running/);

      ok(await docker(['start', name]));
      ok(await docker(['kill', name]));
      const killed = JSON.parse(ok(await docker(['inspect', name]))) as Array<{
        State: { ExitCode: number };
      }>;
      assert.equal(killed[0]?.State.ExitCode, 137);
    } finally {
      await docker(['rm', '-f', name]);
    }
    const gone = await docker(['inspect', name]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /No such object|No such container/);
    assert.ok(vm);
    assert.deepEqual(await vmLeaks(vm.pid, vm.runDir), []);
  });

  it('rm -f of a running container leaves no qemu, virtiofsd, mount or socket', async () => {
    const id = ok(await docker(['run', '-d', s.busybox, 'sleep', '300'])).trim();
    const pid = Number(ok(await docker(['inspect', '-f', '{{.State.Pid}}', id])).trim());
    const runDir = await vmRunDirOf(pid);
    assert.ok(runDir, `State.Pid ${pid} is not a QEMU process`);
    ok(await docker(['rm', '-f', id]));
    assert.deepEqual(await vmLeaks(pid, runDir), []);
  });

  it('--rm leaves no qemu, virtiofsd, mount or socket', async () => {
    // The VM of a --rm container is gone before the CLI returns; catch its pid while it runs.
    const name = `it-rm-${process.pid}`;
    const run = runCli(s.cliEnv(), ['run', '--rm', '--name', name, s.busybox, 'sleep', '3']);
    const pid = await waitFor(
      'the VM pid',
      async () => {
        const r = await docker(['inspect', '-f', '{{.State.Pid}}', name]);
        const n = Number(r.stdout.trim());
        return r.code === 0 && n > 0 ? n : 0;
      },
      60_000,
    );
    const runDir = await vmRunDirOf(pid);
    assert.ok(runDir, `State.Pid ${pid} is not a QEMU process`);
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await vmLeaks(pid, runDir), []);
  });

  it('bad input gets dockerd status and message', async () => {
    const missing = await docker(['run', '--rm', `${s.registry}/nosuchimage:1`, 'true']);
    assert.equal(missing.code, 125);
    assert.match(missing.stderr, /Unable to find image/);
    assert.match(missing.stderr, /not found|manifest unknown/);

    const badRef = await docker(['run', '--rm', 'UPPER/case', 'true']);
    assert.equal(badRef.code, 125);
    assert.match(badRef.stderr, /invalid reference format/);

    const name = `it-dup-${process.pid}`;
    ok(await docker(['create', '--name', name, s.busybox, 'true']));
    try {
      const dup = await docker(['create', '--name', name, s.busybox, 'true']);
      assert.equal(dup.code, 1); // `docker create` exits 1 on a daemon error (125 is `docker run`)
      assert.match(
        dup.stderr,
        new RegExp(`Conflict. The container name "/${name}" is already in use by container`),
      );
    } finally {
      ok(await docker(['rm', name]));
    }
    const count = ok(await docker(['ps', '-aq', '--filter', `name=${name}`]));
    assert.equal(count.trim(), '', 'no half-created container left');
  });
});
