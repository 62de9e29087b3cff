/**
 * Terminal processes in the agent (Docker's Tty): ContainerManager runs them through the real
 * capsule-console (compiled here with gcc) in front of a FAKE crun (testing/fake-crun-console.py:
 * a pty and SCM_RIGHTS as crun --console-socket does, a host command instead of a container). The
 * real crun in the guest is covered by integration/cli-tty.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ContainerManager, type OutputSink } from './containers';
import { AgentError } from './errors';

// dist/guest/agent → the sources stay in guest/.
const SOURCE_DIR = path.resolve(__dirname, '../../../guest');
const FAKE_CRUN = path.join(SOURCE_DIR, 'agent', 'testing', 'fake-crun-console.py');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Collects output; `waitFor` resolves once the text (\r dropped) matches. */
function collector() {
  let text = '';
  const streams = new Set<number>();
  let end!: () => void;
  const ended = new Promise<void>((r) => (end = r));
  const sink: OutputSink = {
    write: (stream, data) => {
      streams.add(stream);
      text += data.toString();
      return true;
    },
    onceDrain: () => undefined,
    end: () => end(),
  };
  return {
    sink,
    ended,
    streams,
    get text() {
      return text.replace(/\r/g, '');
    },
    async waitFor(re: RegExp, ms = 5000) {
      const until = Date.now() + ms;
      while (!re.test(text.replace(/\r/g, ''))) {
        if (Date.now() > until) assert.fail(`no ${re} in ${JSON.stringify(text)}`);
        await sleep(20);
      }
    },
  };
}

describe('agent terminal processes (capsule-console + fake crun)', () => {
  let dir: string;
  let manager: ContainerManager;
  let rootfs: string;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-agent-tty-'));
    const bin = path.join(dir, 'bin');
    await mkdir(bin);
    // Fails (never skips) without gcc: scripts/setup.sh installs it.
    execFileSync('gcc', [
      '-O2',
      '-Wall',
      '-o',
      path.join(bin, 'capsule-console'),
      path.join(SOURCE_DIR, 'console', 'capsule-console.c'),
    ]);
    // Found next to crun, as in the guest (/agent/bin).
    const crun = path.join(bin, 'crun');
    await writeFile(crun, `#!/bin/sh\nexec python3 ${FAKE_CRUN} "$@"\n`);
    await chmod(crun, 0o755);
    rootfs = path.join(dir, 'rootfs');
    await mkdir(path.join(rootfs, 'etc'), { recursive: true });
    await writeFile(path.join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\n');
    manager = new ContainerManager({
      crunPath: crun,
      crunRoot: path.join(dir, 'state'),
      bundlesDir: path.join(dir, 'bundles'),
      log: () => undefined,
      cgroupRoot: path.join(dir, 'cgroup'),
    });
  });

  after(async () => {
    await manager.killAll(2000);
    await rm(dir, { recursive: true, force: true });
  });

  const env = [`PATH=${process.env.PATH ?? '/usr/bin:/bin'}`];

  async function createTty(id: string, args: string[], size: { rows: number; cols: number }) {
    await manager.create({
      containerId: id,
      ociSpecJson: JSON.stringify({ process: { args, env, cwd: '/', terminal: true }, root: { path: 'x' } }),
      rootfsGuestPath: rootfs,
      user: '',
      openStdin: true,
      workingDir: '',
      terminal: size,
    });
  }

  it('runs the init on a terminal of the initial size: one output stream, stdin, exit status', async () => {
    await createTty('t1', ['/bin/sh', '-c', 'stty size; echo err >&2; read x; echo got:$x; exit 3'], {
      rows: 33,
      cols: 101,
    });
    const out = collector();
    manager.attachOutput('t1', '', out.sink);
    await manager.start('t1');
    await out.waitFor(/^33 101$/m);
    await manager.writeStdin('t1', '', Buffer.from('hello\n'));
    const status = await manager.wait('t1', '');
    await out.ended;
    assert.equal(status.exitCode, 3);
    assert.match(out.text, /^err$/m);
    assert.match(out.text, /^got:hello$/m);
    // The echo of the input by the terminal, as with dockerd.
    assert.match(out.text, /^hello$/m);
    assert.deepEqual([...out.streams], [1], 'stderr is on the terminal too');
    // The console socket is gone.
    assert.deepEqual(await readdir(path.join(dir, 'console')), []);
  });

  it('resizes the init terminal; ^C reaches the foreground process, not the shell', async () => {
    await createTty('t2', ['/bin/sh', '-i'], { rows: 24, cols: 80 });
    const out = collector();
    manager.attachOutput('t2', '', out.sink);
    await manager.start('t2');
    manager.resize('t2', '', 40, 132);
    await sleep(300);
    await manager.writeStdin('t2', '', Buffer.from('stty size\n'));
    await out.waitFor(/40 132$/m);
    await manager.writeStdin('t2', '', Buffer.from('sleep 100\n'));
    await sleep(500);
    await manager.writeStdin('t2', '', Buffer.from('\x03'));
    await manager.writeStdin('t2', '', Buffer.from('echo alive:$((6*7))\n'));
    await out.waitFor(/alive:42$/m);
    await manager.writeStdin('t2', '', Buffer.from('exit 4\n'));
    assert.equal((await manager.wait('t2', '')).exitCode, 4);
  });

  it('runs a tty exec through crun exec --console-socket with process.terminal, and resizes it', async () => {
    // A container with a terminal to exec into (its init: a shell that waits).
    await createTty('t3', ['/bin/sh', '-c', 'read x'], { rows: 0, cols: 0 });
    manager.attachOutput('t3', '', collector().sink);
    await manager.start('t3');
    const pid = await manager.exec({
      containerId: 't3',
      execId: 'e1',
      args: ['/bin/sh', '-c', 'stty size; echo oops >&2; read x; stty size; exit 7'],
      env,
      workingDir: '',
      user: '',
      openStdin: true,
      tty: true,
      rows: 12,
      cols: 34,
    });
    assert.ok(pid > 0);
    const out = collector();
    manager.attachOutput('t3', 'e1', out.sink);
    await out.waitFor(/^12 34$/m);
    manager.resize('t3', 'e1', 50, 60);
    // The size goes over fd 3 and the input over fd 0: let capsule-console take the size first.
    await sleep(300);
    await manager.writeStdin('t3', 'e1', Buffer.from('\n'));
    assert.equal((await manager.wait('t3', 'e1')).exitCode, 7);
    await out.ended;
    assert.match(out.text, /^50 60$/m);
    assert.match(out.text, /^oops$/m);
    assert.deepEqual([...out.streams], [1]);
    // Gone once waited and read: a resize is then NotFound, as any call.
    assert.throws(
      () => manager.resize('t3', 'e1', 1, 1),
      (err: unknown) => (err as AgentError).kind === 'NotFound',
    );
    await manager.writeStdin('t3', '', Buffer.from('\n'));
    await manager.wait('t3', '');
  });

  it('a tty exec that cannot start fails as without a terminal (126, crun message)', async () => {
    await createTty('t4', ['/bin/sh', '-c', 'read x'], { rows: 0, cols: 0 });
    manager.attachOutput('t4', '', collector().sink);
    await manager.start('t4');
    await assert.rejects(
      manager.exec({
        containerId: 't4',
        execId: 'e2',
        args: ['nosuchcmd'],
        env,
        workingDir: '',
        user: '',
        openStdin: true,
        tty: true,
      }),
      (err: unknown) =>
        err instanceof AgentError &&
        err.exitCode === 126 &&
        /executable file not found in \$PATH/.test(err.message),
    );
    await manager.writeStdin('t4', '', Buffer.from('\n'));
    await manager.wait('t4', '');
  });

  it('refuses a bad size; a resize before the start is a no-op', async () => {
    await createTty('t5', ['/bin/true'], { rows: 0, cols: 0 });
    assert.throws(
      () => manager.resize('t5', '', 70000, 1),
      (err: unknown) => (err as AgentError).kind === 'InvalidArgument',
    );
    manager.resize('t5', '', 10, 10);
    await assert.rejects(
      manager.create({
        containerId: 't6',
        ociSpecJson: JSON.stringify({ process: { args: ['x'], terminal: 'yes' } }),
        rootfsGuestPath: rootfs,
        user: '',
        openStdin: false,
        workingDir: '',
      }),
      (err: unknown) => (err as AgentError).kind === 'InvalidArgument',
    );
  });
});
