/**
 * The guest agent, bundled as it ships (build/guest/agent.js), run on the host with real crun and a
 * busybox rootfs, driven through the host's AgentClient: the agent's half of the protocol without a
 * VM. Requires root, crun, a static busybox, util-linux unshare and `npm run build`; a missing
 * prerequisite fails the suite (it never skips).
 *
 * crun runs through a wrapper: this host mounts cgroups in hybrid v1/v2 mode, which crun refuses,
 * and lacks CAP_SYS_RESOURCE (crun raises RLIMIT_MEMLOCK for its device-cgroup eBPF program). The
 * wrapper gives crun a cgroup2-only /sys/fs/cgroup in a private mount namespace and no cgroup
 * manager; in the guest, crun runs as is (pure cgroup2, every capability). capsule-exec (execs
 * without a terminal) is built from guest/exec/ with gcc and runs through the same kind of wrapper:
 * it joins the container's cgroup, which it finds under a cgroup2 /sys/fs/cgroup.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvalidParameterError, SystemError } from '../common/errdefs';
import { AgentClient, exitCodeOf } from '../runtime/agent-client';
import { buildOciSpec } from '../runtime/oci-spec';
import type { OutputChunk } from '../runtime/types';

const ROOT = path.resolve(__dirname, '../..');
const BUNDLE = path.join(ROOT, 'build/guest/agent.js');
const BUSYBOX = '/bin/busybox';
const EXEC_HELPER_SOURCE = path.join(ROOT, 'guest/exec/capsule-exec.c');

function requirePrerequisites(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root');
  if (!existsSync(BUNDLE)) missing.push(`${BUNDLE} (npm run build)`);
  if (!existsSync(BUSYBOX)) missing.push(`${BUSYBOX} (Debian busybox-static)`);
  else if (spawnSync('ldd', [BUSYBOX]).status === 0) missing.push(`a static ${BUSYBOX} (busybox-static)`);
  if (spawnSync('crun', ['--version']).status !== 0) missing.push('crun');
  if (spawnSync('unshare', ['--version']).status !== 0) missing.push('unshare (util-linux)');
  if (spawnSync('gcc', ['--version']).status !== 0) missing.push('gcc (capsule-exec)');
  if (missing.length > 0) throw new Error(`agent-host test prerequisites missing: ${missing.join(', ')}`);
}

async function buildRootfs(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev', 'root', 'home/user']) {
    await fs.mkdir(path.join(dir, d), { recursive: true });
  }
  await fs.copyFile(BUSYBOX, path.join(dir, 'bin/busybox'));
  await fs.chmod(path.join(dir, 'bin/busybox'), 0o755);
  const applets = spawnSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet !== 'busybox') await fs.symlink('busybox', path.join(dir, 'bin', applet));
  }
  await fs.writeFile(
    path.join(dir, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:User:/home/user:/bin/sh\n',
  );
  await fs.writeFile(
    path.join(dir, 'etc/group'),
    'root:x:0:\nwheel:x:10:root\nuser:x:1000:\nstaff:x:50:user\n',
  );
  await fs.writeFile(path.join(dir, 'not-executable'), 'just text\n');
}

const CRUN_WRAPPER = `#!/bin/sh
# Test-only: crun with a cgroup2-only view and no cgroup manager (see agent-host.test.ts).
exec unshare -m sh -c 'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec crun --cgroup-manager=disabled "$@"' crun "$@"
`;

const EXEC_HELPER_WRAPPER = (helper: string) => `#!/bin/sh
# Test-only: capsule-exec with a cgroup2-only view (see agent-host.test.ts).
exec unshare -m sh -c 'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@"' ${helper} "$@"
`;

interface RunOptions {
  user?: string;
  cwd?: string;
  env?: string[];
  openStdin?: boolean;
}

interface Run {
  id: string;
  output: OutputChunk[];
  ended: Promise<void>;
}

describe('guest agent on the host (real crun)', { timeout: 180_000 }, () => {
  let dir: string;
  let rootfs: string;
  let agent: ChildProcess;
  let agentLog = '';
  let client: AgentClient;
  let seq = 0;

  before(async () => {
    requirePrerequisites();
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-agent-host-'));
    rootfs = path.join(dir, 'rootfs');
    await buildRootfs(rootfs);
    const crun = path.join(dir, 'crun');
    await fs.writeFile(crun, CRUN_WRAPPER, { mode: 0o755 });
    const helperBinary = path.join(dir, 'capsule-exec.bin');
    const gcc = spawnSync(
      'gcc',
      ['-O2', '-Wall', '-Werror', '-static', '-o', helperBinary, EXEC_HELPER_SOURCE],
      {
        encoding: 'utf8',
      },
    );
    assert.equal(gcc.status, 0, `gcc capsule-exec: ${gcc.stderr}`);
    const helper = path.join(dir, 'capsule-exec');
    await fs.writeFile(helper, EXEC_HELPER_WRAPPER(helperBinary), { mode: 0o755 });
    const socketPath = path.join(dir, 'agent.sock');
    const t0 = Date.now();
    agent = spawn(process.execPath, ['--jitless', BUNDLE], {
      env: {
        PATH: process.env.PATH,
        CAPSULE_AGENT_LISTEN: socketPath,
        CAPSULE_BUNDLE_DIR: path.join(dir, 'bundles'),
        CAPSULE_CRUN: crun,
        CAPSULE_CRUN_ROOT: path.join(dir, 'crun-state'),
        CAPSULE_EXEC_HELPER: helper,
        CAPSULE_WARMUP_DIR: path.join(dir, 'warm-up'),
        CAPSULE_WARMUP_BUSYBOX: BUSYBOX,
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    agent.stderr?.on('data', (d: Buffer) => (agentLog += d.toString()));
    client = new AgentClient({ socketPath, transport: 'direct' });
    const check = await client.waitReady(15_000).catch((err: Error) => {
      throw new Error(`agent did not come up: ${err.message}\n${agentLog}`);
    });
    process.stderr.write(`agent-host: agent ready in ${Date.now() - t0} ms (node --jitless, bundled)\n`);
    assert.equal(check.kernelRelease, os.release());
  });

  after(async () => {
    client?.close();
    if (agent && agent.exitCode === null) {
      const exited = new Promise((r) => agent.once('exit', r));
      agent.kill('SIGTERM');
      await exited;
    }
    // Nothing of ours may outlive the agent: every `crun run` and container process is gone.
    const left = spawnSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' })
      .stdout.split('\n')
      .filter((l) => dir && l.includes(dir));
    if (dir) await fs.rm(dir, { recursive: true, force: true });
    assert.deepEqual(left, [], 'processes left behind by the agent');
  });

  async function create(args: string[], opts: RunOptions = {}): Promise<string> {
    const id = `t${++seq}-${process.pid}`;
    const spec = buildOciSpec({
      containerId: id,
      hostname: id,
      process: {
        args,
        env: opts.env ?? ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        cwd: opts.cwd ?? '',
        user: opts.user ?? '',
        openStdin: opts.openStdin ?? false,
        tty: false,
      },
    });
    await client.createContainer({
      containerId: id,
      ociSpec: spec,
      rootfsGuestPath: rootfs,
      user: opts.user ?? '',
      openStdin: opts.openStdin ?? false,
      workingDir: opts.cwd ?? '',
    });
    return id;
  }

  function collect(id: string): Run {
    const output: OutputChunk[] = [];
    const stream = client.readOutput(id);
    stream.on('data', (c: OutputChunk) => output.push(c));
    const ended = new Promise<void>((resolve, reject) => {
      stream.once('end', resolve);
      stream.once('error', reject);
    });
    return { id, output, ended };
  }

  /** Create, attach output, start; the run's output is complete once `ended` resolves. */
  async function start(args: string[], opts: RunOptions = {}): Promise<Run> {
    const id = await create(args, opts);
    const run = collect(id);
    await client.startContainer(id);
    return run;
  }

  async function runToEnd(args: string[], opts: RunOptions = {}) {
    const run = await start(args, opts);
    const status = await client.waitProcess(run.id);
    await run.ended;
    const text = (s: 1 | 2) =>
      Buffer.concat(run.output.filter((c) => c.stream === s).map((c) => c.data)).toString('utf8');
    return { exitCode: status.exitCode, stdout: text(1), stderr: text(2), output: run.output };
  }

  async function waitForOutput(run: Run, needle: string): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (
      !Buffer.concat(run.output.map((c) => c.data))
        .toString()
        .includes(needle)
    ) {
      if (Date.now() > deadline) throw new Error(`no ${JSON.stringify(needle)} in output`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('Check reports version, kernel release and uptime', async () => {
    const check = await client.check();
    assert.equal(check.agentVersion, '0.1.0');
    assert.equal(check.kernelRelease, os.release());
    assert.ok(check.uptimeMs > 0 && check.agentReadyMs >= check.agentStartMs);
  });

  it('exit 3 → 3', async () => {
    const r = await runToEnd(['sh', '-c', 'exit 3']);
    assert.equal(r.exitCode, 3);
  });

  it('stdout and stderr stay apart and in order', async () => {
    const r = await runToEnd([
      'sh',
      '-c',
      'echo o1; sleep 0.1; echo e1 >&2; sleep 0.1; echo o2; sleep 0.1; echo e2 >&2',
    ]);
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'o1\no2\n');
    assert.equal(r.stderr, 'e1\ne2\n');
    assert.deepEqual(
      r.output.map((c) => `${c.stream}:${c.data.toString().trim()}`),
      ['1:o1', '2:e1', '1:o2', '2:e2'],
    );
  });

  it('env: the spec environment, HOSTNAME, and HOME from passwd', async () => {
    const r = await runToEnd(['env'], { env: ['PATH=/bin', 'FOO=bar baz'] });
    const env = r.stdout.trim().split('\n').sort();
    assert.ok(env.includes('FOO=bar baz'), r.stdout);
    assert.ok(env.includes('PATH=/bin'));
    assert.ok(env.includes('HOME=/root'));
    assert.ok(env.some((e) => e.startsWith('HOSTNAME=t')));
  });

  it('a missing working dir is created (root, 0755) and used', async () => {
    const r = await runToEnd(['sh', '-c', 'pwd; stat -c "%U %a" .'], { cwd: '/work/new/dir', user: '1000' });
    assert.equal(r.stdout, '/work/new/dir\nroot 755\n');
  });

  it('user 1000:1000 → id', async () => {
    const r = await runToEnd(['id'], { user: '1000:1000' });
    assert.equal(r.stdout.trim(), 'uid=1000(user) gid=1000(user) groups=1000(user)');
  });

  it('user by name gets its groups from /etc/group', async () => {
    const r = await runToEnd(['sh', '-c', 'id; echo $HOME'], { user: 'user' });
    assert.equal(r.stdout, 'uid=1000(user) gid=1000(user) groups=50(staff),1000(user)\n/home/user\n');
  });

  it("a user missing from passwd fails like dockerd's", async () => {
    const err = await create(['id'], { user: 'nobody' }).then(
      () => assert.fail('created'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof SystemError);
    assert.equal(err.message, 'unable to find user nobody: no matching entries in passwd file');
    assert.equal(exitCodeOf(err), 128);
  });

  it('a missing executable is a start failure naming it, exit code 127', async () => {
    const id = await create(['nosuch', 'arg']);
    const run = collect(id);
    const err = await client.startContainer(id).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InvalidParameterError, String(err));
    assert.match(err.message, /exec: "nosuch": executable file not found in \$PATH/);
    assert.equal(exitCodeOf(err), 127);
    await assert.rejects(client.waitProcess(id), InvalidParameterError);
    await run.ended;
  });

  it('a file that is not executable is a start failure, exit code 126', async () => {
    const id = await create(['/not-executable']);
    const err = await client.startContainer(id).then(
      () => assert.fail('started'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof InvalidParameterError);
    assert.match(err.message, /exec: "\/not-executable": permission denied/);
    assert.equal(exitCodeOf(err), 126);
  });

  it('a process that starts and exits non-zero is not a start failure', async () => {
    const r = await runToEnd(['sh', '-c', 'echo failing >&2; exit 1']);
    assert.equal(r.exitCode, 1);
    assert.equal(r.stderr, 'failing\n');
  });

  it('RunExec: one stream carries the pid, the output in order and the exit; a failed start is 126', async () => {
    const run = await start(['sh', '-c', 'echo ready; sleep 1000']);
    await waitForOutput(run, 'ready');
    const started = await client.runExec({
      containerId: run.id,
      execId: 'exec-1',
      args: ['sh', '-c', 'echo out; echo err >&2; echo again; exit 5'],
      env: ['PATH=/bin'],
      workingDir: '',
      user: '',
      openStdin: false,
      tty: false,
    });
    assert.ok(started.pid > 0);
    const chunks: OutputChunk[] = [];
    for await (const chunk of started.output) chunks.push(chunk as OutputChunk);
    const text = (s: 1 | 2) =>
      Buffer.concat(chunks.filter((c) => c.stream === s).map((c) => c.data)).toString('utf8');
    assert.deepEqual([text(1), text(2)], ['out\nagain\n', 'err\n']);
    assert.deepEqual(await started.exited, { exitCode: 5, oomKilled: false });
    const failed = await client
      .runExec({
        containerId: run.id,
        execId: 'exec-2',
        args: ['nosuch'],
        env: ['PATH=/bin'],
        workingDir: '',
        user: '',
        openStdin: false,
        tty: false,
      })
      .then(
        () => assert.fail('should fail'),
        (e: unknown) => e,
      );
    assert.match(String(failed), /executable file not found in \$PATH/);
    assert.equal(exitCodeOf(failed), 126);
    await client.signalProcess(run.id, '', 9);
    await client.waitProcess(run.id);
    await run.ended;
  });

  it('capsule-exec sets up an exec as `crun exec` does (namespaces, credentials, capabilities, limits)', async () => {
    const run = await start(['sh', '-c', 'echo ready; sleep 1000'], { user: 'user' });
    await waitForOutput(run, 'ready');
    const probe = [
      'grep -E "^(Uid|Gid|Groups|Cap...|NoNewPrivs|Seccomp|SigBlk|SigIgn|Umask)" /proc/self/status',
      'for n in pid mnt uts ipc; do readlink /proc/self/ns/$n; done',
      'cat /proc/self/oom_score_adj; ulimit -a; pwd; id; hostname; echo "$HOME $A"',
      'cut -d" " -f5,6 /proc/self/stat',
    ].join('; ');
    const viaHelper = async (user: string) => {
      const started = await client.runExec({
        containerId: run.id,
        execId: `parity-${user || 'default'}`,
        args: ['sh', '-c', probe],
        env: ['PATH=/bin', 'A=1'],
        workingDir: '/tmp',
        user,
        openStdin: false,
        tty: false,
      });
      const chunks: OutputChunk[] = [];
      for await (const chunk of started.output) chunks.push(chunk as OutputChunk);
      assert.equal((await started.exited).exitCode, 0, Buffer.concat(chunks.map((c) => c.data)).toString());
      return Buffer.concat(chunks.filter((c) => c.stream === 1).map((c) => c.data)).toString('utf8');
    };
    // crun exec with the process the agent would have written for it: config.json's, with the
    // exec's args, env, cwd and user (resolved as the agent resolves them: uid, gid, groups).
    const config = JSON.parse(
      await fs.readFile(path.join(dir, 'bundles', run.id, 'config.json'), 'utf8'),
    ) as { process: Record<string, unknown> };
    const viaCrun = (user: { uid: number; gid: number; additionalGids: number[] }, home: string) => {
      const processFile = path.join(dir, `parity-${user.uid}.json`);
      const proc = {
        ...config.process,
        args: ['sh', '-c', probe],
        env: ['PATH=/bin', 'A=1', `HOME=${home}`],
        cwd: '/tmp',
        user,
      };
      return fs.writeFile(processFile, JSON.stringify(proc)).then(() => {
        const r = spawnSync(
          path.join(dir, 'crun'),
          ['--root', path.join(dir, 'crun-state'), 'exec', '--process', processFile, run.id],
          { encoding: 'utf8' },
        );
        assert.equal(r.status, 0, r.stderr);
        return r.stdout;
      });
    };
    assert.equal(
      await viaHelper(''),
      await viaCrun({ uid: 1000, gid: 1000, additionalGids: [1000, 50] }, '/home/user'),
    );
    assert.equal(await viaHelper('0'), await viaCrun({ uid: 0, gid: 0, additionalGids: [0, 10] }, '/root'));
    await client.signalProcess(run.id, '', 9);
    await client.waitProcess(run.id);
    await run.ended;
  });

  it('SIGTERM → 143 for a process that handles it', async () => {
    const run = await start(['sh', '-c', 'trap "exit 143" TERM; echo ready; sleep 1000 & wait']);
    await waitForOutput(run, 'ready');
    await client.signalProcess(run.id, '', 15);
    assert.equal((await client.waitProcess(run.id)).exitCode, 143);
    await run.ended;
  });

  it('SIGKILL → 137 for a process that ignores SIGTERM (PID 1 semantics, as Docker)', async () => {
    const run = await start(['sh', '-c', 'trap "" TERM; echo ready; sleep 1000']);
    await waitForOutput(run, 'ready');
    await client.signalProcess(run.id, '', 15);
    const wait = client.waitProcess(run.id);
    const still = await Promise.race([
      wait.then(() => 'exited'),
      new Promise((r) => setTimeout(() => r('running'), 500)),
    ]);
    assert.equal(still, 'running');
    await client.signalProcess(run.id, '', 9);
    assert.equal((await wait).exitCode, 137);
    await run.ended;
    await client.signalProcess(run.id, '', 9); // after exit: a no-op, no error
  });

  it('20 MiB of output arrives complete and in order', async () => {
    const size = 20 * 1024 * 1024;
    const t0 = Date.now();
    const r = await start([
      'sh',
      '-c',
      `yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c ${size}; echo done >&2`,
    ]);
    assert.equal((await client.waitProcess(r.id)).exitCode, 0);
    await r.ended;
    const out = Buffer.concat(r.output.filter((c) => c.stream === 1).map((c) => c.data));
    const ms = Date.now() - t0;
    process.stderr.write(
      `agent-host: 20 MiB in ${ms} ms (${((size / 1048576 / ms) * 1000).toFixed(0)} MiB/s)\n`,
    );
    assert.equal(out.length, size);
    const line = '0123456789abcdefghijklmnopqrstuvwxyz\n';
    const expected = Buffer.from(line.repeat(Math.ceil(size / line.length))).subarray(0, size);
    assert.equal(
      createHash('sha256').update(out).digest('hex'),
      createHash('sha256').update(expected).digest('hex'),
    );
    assert.equal(
      Buffer.concat(r.output.filter((c) => c.stream === 2).map((c) => c.data)).toString(),
      'done\n',
    );
  });

  it('output is not read before a reader attaches: the process blocks, nothing is lost', async () => {
    const size = 4 * 1024 * 1024;
    const id = await create(['sh', '-c', `head -c ${size} /dev/zero; echo end`]);
    await client.startContainer(id);
    const wait = client.waitProcess(id);
    const early = await Promise.race([
      wait.then(() => 'exited'),
      new Promise((r) => setTimeout(() => r('blocked'), 1000)),
    ]);
    assert.equal(early, 'blocked', 'the process finished without anyone reading its output');
    const run = collect(id);
    assert.equal((await wait).exitCode, 0);
    await run.ended;
    const out = Buffer.concat(run.output.map((c) => c.data));
    assert.equal(out.length, size + 4);
    assert.equal(out.subarray(size).toString(), 'end\n');
  });

  it('stdin: written data reaches the process, close ends it', async () => {
    const run = await start(['sh', '-c', 'cat; echo closed'], { openStdin: true });
    await client.writeStdin(run.id, '', Buffer.from('hello\n'));
    const big = Buffer.alloc(1024 * 1024, 'x');
    for (let i = 0; i < 4; i++) await client.writeStdin(run.id, '', big);
    await client.closeStdin(run.id);
    assert.equal((await client.waitProcess(run.id)).exitCode, 0);
    await run.ended;
    const out = Buffer.concat(run.output.map((c) => c.data)).toString();
    assert.equal(out.length, 6 + 4 * 1024 * 1024 + 7);
    assert.ok(out.startsWith('hello\nxxx'));
    assert.ok(out.endsWith('x\nclosed\n') || out.endsWith('xclosed\n'));
  });

  it('without open_stdin the process reads /dev/null', async () => {
    const r = await runToEnd(['sh', '-c', 'cat; echo eof']);
    assert.equal(r.stdout, 'eof\n');
  });

  it('errors: unknown container, duplicate id, second reader', async () => {
    await assert.rejects(client.startContainer('nosuch-container'), { code: 'NotFound' });
    const run = await start(['sh', '-c', 'echo ready; sleep 1000']);
    await assert.rejects(
      client.createContainer({
        containerId: run.id,
        ociSpec: {},
        rootfsGuestPath: rootfs,
        user: '',
        openStdin: false,
        workingDir: '',
      }),
      { code: 'Conflict' },
    );
    const second = client.readOutput(run.id);
    await assert.rejects(
      new Promise((resolve, reject) => {
        second.on('data', () => undefined);
        second.once('end', resolve);
        second.once('error', reject);
      }),
      { code: 'Conflict' },
    );
    await client.signalProcess(run.id, '', 9);
    assert.equal((await client.waitProcess(run.id)).exitCode, 137);
    await run.ended;
  });

  it('PrepareShutdown syncs', async () => {
    await client.prepareShutdown();
  });

  it('WarmUp runs a throwaway container and leaves no trace of it', async () => {
    const spec = buildOciSpec({
      containerId: 'capsule-warm-up',
      hostname: 'capsule-warm-up',
      process: { args: ['/bin/true'], env: ['PATH=/bin'], cwd: '', user: '', openStdin: false, tty: false },
    });
    const t0 = Date.now();
    await client.warmUp(spec);
    process.stderr.write(`agent-host: warm-up container in ${Date.now() - t0} ms\n`);
    assert.equal(existsSync(path.join(dir, 'warm-up')), false, 'the warm-up rootfs is removed');
    assert.equal(existsSync(path.join(dir, 'bundles', 'capsule-warm-up')), false, 'its bundle is removed');
    assert.deepEqual(
      await fs.readdir(path.join(dir, 'crun-state')).then((d) => d.filter((n) => n.includes('warm'))),
      [],
    );
    await assert.rejects(client.waitProcess('capsule-warm-up'), { code: 'NotFound' });
    // A second warm-up works too (nothing of the first one is in the way).
    await client.warmUp(spec);
  });
});
