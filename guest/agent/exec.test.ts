/**
 * The agent's exec path (ContainerManager.exec and the stdio of an exec) on the host, with a fake
 * crun: a node script that does what crun does as far as the agent can see — `run` writes its
 * --pid-file and runs until killed; `exec` reads --process, writes the pid file and runs the
 * process's args with its env and cwd (host binaries), or, for an executable that does not exist,
 * logs crun's error and exits 255 without a pid file. The same suite runs a second time with a fake
 * capsule-exec (a container whose namespaces it can join): a node script that reads the helper's
 * command line, runs the process as the fake crun does and reports `pid N` or crun's error on fd 3.
 * The real crun and capsule-exec are exercised by integration/agent-host.test.ts and the VM tests.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ContainerManager, oomKillCount, type OutputSink } from './containers';
import { AgentError } from './errors';

const FAKE_CRUN = `#!${process.execPath}
// Fake crun for guest/agent/exec.test.ts.
const fs = require('fs');
const { spawn } = require('child_process');
const argv = process.argv.slice(2);
const opt = (name) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
const log = (argv.find((a) => a.startsWith('--log=file:')) || '').slice('--log=file:'.length);
const pidFile = opt('--pid-file');
if (argv.includes('run')) {
  fs.writeFileSync(pidFile, String(process.pid));
  setInterval(() => {}, 1000);
  process.on('SIGTERM', () => process.exit(143));
} else if (argv.includes('exec')) {
  const proc = JSON.parse(fs.readFileSync(opt('--process'), 'utf8'));
  fs.writeFileSync(require('path').join(require('path').dirname(opt('--process')), 'seen.json'), JSON.stringify(proc));
  const exe = proc.args[0];
  if (exe.startsWith('nosuch')) {
    fs.writeFileSync(log, JSON.stringify({ msg: 'executable file \`' + exe + '\` not found in $PATH: No such file or directory', level: 'error' }) + '\\n');
    process.stderr.write('executable file \`' + exe + '\` not found in $PATH: No such file or directory\\n');
    process.exit(255);
  }
  if (!fs.existsSync(proc.cwd)) {
    fs.writeFileSync(log, JSON.stringify({ msg: 'chdir \`' + proc.cwd + '\`: No such file or directory', level: 'error' }) + '\\n');
    process.exit(255);
  }
  const child = spawn(exe, proc.args.slice(1), { env: Object.fromEntries(proc.env.map((e) => [e.split('=')[0], e.slice(e.indexOf('=') + 1)])), cwd: proc.cwd, stdio: 'inherit' });
  child.on('spawn', () => fs.writeFileSync(pidFile, String(child.pid)));
  child.on('exit', (code, signal) => process.exit(code === null ? 128 + require('os').constants.signals[signal] : code));
}
`;

/** Fake capsule-exec: records what it was asked for in <dir>/helper-seen.json (SEEN_FILE below). */
const FAKE_EXEC_HELPER = `#!${process.execPath}
// Fake capsule-exec for guest/agent/exec.test.ts.
const fs = require('fs');
const { spawn } = require('child_process');
const argv = process.argv.slice(2);
const dash = argv.indexOf('--');
const args = argv.slice(dash + 1);
const seen = { args, env: [], ns: [] };
for (let i = 0; i < dash; i++) {
  const a = argv[i];
  if (a === '--no-new-privs') { seen.noNewPrivs = true; continue; }
  const v = argv[++i];
  if (a === '--env') seen.env.push(v);
  else if (a === '--ns') seen.ns.push(v);
  else seen[a.slice(2)] = v;
}
fs.writeFileSync(SEEN_FILE, JSON.stringify(seen));
const status = fs.createWriteStream(null, { fd: 3 });
const report = (line, then) => status.end(line + '\\n', then);
if (args[0].startsWith('nosuch')) {
  report('error executable file \`' + args[0] + '\` not found in $PATH: No such file or directory', () => process.exit(1));
} else if (!fs.existsSync(seen.cwd)) {
  report('error chdir \`' + seen.cwd + '\`: No such file or directory', () => process.exit(1));
} else {
  const env = Object.fromEntries(seen.env.map((e) => [e.split('=')[0], e.slice(e.indexOf('=') + 1)]));
  const child = spawn(args[0], args.slice(1), { env, cwd: seen.cwd, stdio: ['inherit', 'inherit', 'inherit'] });
  child.on('spawn', () => report('pid ' + child.pid));
  child.on('exit', (code, signal) => process.exit(code === null ? 128 + require('os').constants.signals[signal] : code));
}
`;

function collector(): { sink: OutputSink; ended: Promise<string> } {
  let text = '';
  let end!: (t: string) => void;
  const ended = new Promise<string>((r) => (end = r));
  return {
    sink: {
      write: (stream, data) => {
        text += `${stream}:${data.toString()}`;
        return true;
      },
      onceDrain: () => undefined,
      end: () => end(text),
    },
    ended,
  };
}

for (const via of ['crun', 'capsule-exec'] as const)
  describe(`agent exec (fake ${via})`, () => {
    let dir: string;
    let manager: ContainerManager;
    const id = 'c1';

    before(async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'capsule-agent-exec-'));
      const crun = path.join(dir, 'crun');
      await writeFile(crun, FAKE_CRUN);
      await chmod(crun, 0o755);
      const helper = path.join(dir, 'capsule-exec');
      await writeFile(
        helper,
        FAKE_EXEC_HELPER.replace('SEEN_FILE', JSON.stringify(path.join(dir, 'helper-seen.json'))),
      );
      await chmod(helper, 0o755);
      const rootfs = path.join(dir, 'rootfs');
      await mkdir(path.join(rootfs, 'etc'), { recursive: true });
      await writeFile(
        path.join(rootfs, 'etc/passwd'),
        'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:User:/home/user:/bin/sh\n',
      );
      await writeFile(path.join(rootfs, 'etc/group'), 'root:x:0:\nuser:x:1000:\nstaff:x:50:user\n');
      manager = new ContainerManager({
        crunPath: crun,
        crunRoot: path.join(dir, 'state'),
        bundlesDir: path.join(dir, 'bundles'),
        log: () => undefined,
        cgroupRoot: path.join(dir, 'cgroup'),
      });
      const spec = {
        process: {
          args: ['sleep', '1000'],
          env: ['PATH=/bin'],
          cwd: '/',
          terminal: false,
          capabilities: { bounding: ['CAP_KILL'] },
          oomScoreAdj: 0,
        },
        root: { path: 'ignored' },
        // With namespaces capsule-exec can join, execs without a terminal go through it.
        linux: {
          cgroupsPath: `/capsule/${id}`,
          ...(via === 'capsule-exec' ? { namespaces: [{ type: 'pid' }, { type: 'mount' }] } : {}),
        },
      };
      await manager.create({
        containerId: id,
        ociSpecJson: JSON.stringify(spec),
        rootfsGuestPath: rootfs,
        user: 'user',
        openStdin: false,
        workingDir: '',
      });
      manager.attachOutput(id, '', collector().sink);
      await manager.start(id);
    });

    after(async () => {
      await manager.killAll(2000);
      await rm(dir, { recursive: true, force: true });
    });

    async function run(
      execId: string,
      args: string[],
      opts: { env?: string[]; user?: string; cwd?: string; stdin?: string } = {},
    ) {
      const pid = await manager.exec({
        containerId: id,
        execId,
        args,
        env: opts.env ?? [`PATH=${process.env.PATH ?? '/usr/bin:/bin'}`],
        workingDir: opts.cwd ?? '',
        user: opts.user ?? '',
        openStdin: opts.stdin !== undefined,
        tty: false,
      });
      const out = collector();
      manager.attachOutput(id, execId, out.sink);
      if (opts.stdin !== undefined) {
        await manager.writeStdin(id, execId, Buffer.from(opts.stdin));
        manager.closeStdin(id, execId);
      }
      const status = await manager.wait(id, execId);
      return { pid, status, output: await out.ended };
    }

    it('runs the process, streams stdout and stderr, reports its exit status', async () => {
      const r = await run('e1', ['sh', '-c', 'echo hi; echo err >&2; exit 3']);
      assert.ok(r.pid > 0);
      assert.equal(r.status.exitCode, 3);
      assert.match(r.output, /1:hi\n/);
      assert.match(r.output, /2:err\n/);
    });

    it("process.json: the container's process with the exec's args, env (+HOME), cwd and user", async () => {
      const execId = 'e-spec';
      await manager.exec({
        containerId: id,
        execId,
        args: ['true'],
        env: [`PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, 'A=1'],
        workingDir: '/tmp',
        user: '',
        openStdin: false,
        tty: false,
      });
      manager.attachOutput(id, execId, collector().sink);
      await manager.wait(id, execId);
      if (via === 'crun') {
        const seen = JSON.parse(
          await readFile(path.join(dir, 'bundles', id, 'execs', execId, 'seen.json'), 'utf8'),
        ) as {
          args: string[];
          env: string[];
          cwd: string;
          user: { uid: number; gid: number; additionalGids: number[]; username?: string };
          capabilities: unknown;
          terminal: boolean;
        };
        assert.deepEqual(seen.args, ['true']);
        assert.ok(seen.env.includes('A=1'));
        assert.ok(seen.env.includes('HOME=/home/user'), 'HOME of the container user');
        assert.equal(seen.cwd, '/tmp');
        // "" = the container's user ("user"), resolved in the rootfs
        assert.deepEqual(seen.user, { uid: 1000, gid: 1000, additionalGids: [1000, 50] });
        assert.deepEqual(seen.capabilities, { bounding: ['CAP_KILL'] });
        assert.equal(seen.terminal, false);
      } else {
        const seen = JSON.parse(await readFile(path.join(dir, 'helper-seen.json'), 'utf8')) as Record<
          string,
          unknown
        >;
        assert.deepEqual(seen.args, ['true']);
        assert.ok((seen.env as string[]).includes('A=1'));
        assert.ok((seen.env as string[]).includes('HOME=/home/user'), 'HOME of the container user');
        assert.equal(seen.cwd, '/tmp');
        assert.deepEqual([seen.uid, seen.gid, seen.groups], ['1000', '1000', '1000,50']);
        // CAP_KILL is bit 5; the sets the spec leaves out are empty.
        assert.deepEqual(
          [seen['cap-bounding'], seen['cap-effective'], seen['cap-ambient']],
          ['20', '0', '0'],
        );
        // The container's namespaces, joined through its init (the fake crun's `run`).
        assert.deepEqual(seen.ns, ['pid', 'mnt']);
        assert.match(String(seen.pid), /^\d+$/);
      }
    });

    it('stdin reaches the process and CloseStdin is its EOF', async () => {
      const r = await run('e-stdin', ['cat'], { stdin: 'hello stdin\n' });
      assert.equal(r.status.exitCode, 0);
      assert.equal(r.output, '1:hello stdin\n');
    });

    it("an executable that does not exist: dockerd's message, exit 126, crun's stderr dropped, exec forgotten", async () => {
      await assert.rejects(
        run('e-missing', ['nosuch']),
        (err: unknown) =>
          err instanceof AgentError &&
          err.exitCode === 126 &&
          err.message ===
            'OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH',
      );
      assert.throws(() => manager.attachOutput(id, 'e-missing', collector().sink), /no such exec/);
    });

    it('a missing cwd and an unknown user fail with exit 126 and runc-like messages', async () => {
      await assert.rejects(
        run('e-cwd', ['true'], { cwd: '/nonexistent-dir' }),
        /chdir to cwd \("\/nonexistent-dir"\) set in config.json failed: no such file or directory/,
      );
      await assert.rejects(
        run('e-user', ['true'], { user: 'nobody-here' }),
        (err: unknown) =>
          err instanceof AgentError &&
          err.exitCode === 126 &&
          err.message === 'unable to find user nobody-here: no matching entries in passwd file',
      );
    });

    it('an exec is forgotten once waited and its output read; ids are checked', async () => {
      await run('e-done', ['true']);
      await new Promise((r) => setTimeout(r, 20));
      assert.throws(() => manager.signal(id, 'e-done', 15), /no such exec/);
      await assert.rejects(run('../bad', ['true']), /invalid exec id/);
      await assert.rejects(
        manager.exec({
          containerId: id,
          execId: 'e-tty',
          args: ['true'],
          env: [],
          workingDir: '',
          user: '',
          openStdin: false,
          tty: true,
          rows: 70000,
          cols: 80,
        }),
        /invalid terminal size/,
      );
    });

    it('SignalProcess reaches the exec process', async () => {
      const pid = await manager.exec({
        containerId: id,
        execId: 'e-sleep',
        args: ['sleep', '100'],
        env: [`PATH=${process.env.PATH ?? '/usr/bin:/bin'}`],
        workingDir: '',
        user: '0',
        openStdin: false,
        tty: false,
      });
      assert.ok(pid > 0);
      manager.attachOutput(id, 'e-sleep', collector().sink);
      await manager.signal(id, 'e-sleep', 15);
      assert.equal((await manager.wait(id, 'e-sleep')).exitCode, 143);
    });

    it('oomKillCount reads memory.events (0 without one)', async () => {
      const file = path.join(dir, 'memory.events');
      assert.equal(await oomKillCount(file), 0);
      await writeFile(file, 'low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n');
      assert.equal(await oomKillCount(file), 2);
    });
  });
