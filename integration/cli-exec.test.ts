/**
 * docker exec, top, stats and OOM through the real docker CLI and dockerode against a real capsuled
 * whose containers run in QEMU micro-VMs (the exec runs in the guest through the agent's
 * ExecProcess). Two VMs: one long-running container shared by the exec/top/stats tests, and one
 * small VM that runs out of memory. Expected outputs are what the reference dockerd 20.10 gives for
 * the same commands.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { session, type Session } from './harness/session';
import { runCli, type CliResult } from './harness/cli';
import { waitFor } from './harness/daemon';

let s: Session;
const docker = (args: string[], input?: string): Promise<CliResult> =>
  runCli(s.cliEnv(), args, input === undefined ? {} : { input });

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stdout: ${r.stdout}; stderr: ${r.stderr}`);
  return r.stdout;
}

const suffix = `${process.pid}`;
const name = `it-exec-${suffix}`;
const created = `it-exec-created-${suffix}`;

interface ExecInspect {
  ID: string;
  Running: boolean;
  ExitCode: number | null;
  Pid: number;
  ProcessConfig: { entrypoint: string; arguments: string[]; tty: boolean };
  OpenStdin: boolean;
  ContainerID: string;
}

/** Runs an exec through dockerode as testcontainers does; returns stdout, stderr and the inspect. */
async function dockerodeExec(
  container: string,
  cmd: string[],
): Promise<{ stdout: string; stderr: string; inspect: ExecInspect }> {
  const exec = await s.docker
    .getContainer(container)
    .exec({ Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  const out = new PassThrough();
  const err = new PassThrough();
  const chunks = { out: [] as Buffer[], err: [] as Buffer[] };
  out.on('data', (c: Buffer) => chunks.out.push(c));
  err.on('data', (c: Buffer) => chunks.err.push(c));
  s.docker.modem.demuxStream(stream, out, err);
  await new Promise<void>((resolve, reject) => {
    stream.on('end', resolve);
    stream.on('close', resolve);
    stream.on('error', reject);
  });
  const inspect = (await exec.inspect()) as unknown as ExecInspect;
  return {
    stdout: Buffer.concat(chunks.out).toString(),
    stderr: Buffer.concat(chunks.err).toString(),
    inspect,
  };
}

after(async () => {
  await docker(['rm', '-f', name, created]);
  await (await session()).close();
});

describe('docker exec, top and stats with real VMs', () => {
  before(async () => {
    s = await session();
    ok(await docker(['run', '-d', '--name', name, '-e', 'FROM_CONTAINER=yes', s.busybox, 'sleep', '1000']));
  });

  it('docker exec echo prints the output and exits 0', async () => {
    assert.equal(ok(await docker(['exec', name, 'echo', 'hello-exec'])), 'hello-exec\n');
  });

  it('exec -e -w -u: env merged with the container env, working dir and numeric user', async () => {
    const out = ok(
      await docker([
        'exec',
        '-e',
        'A=1',
        '-w',
        '/tmp',
        '-u',
        '1000:1000',
        name,
        'sh',
        '-c',
        'echo $A $FROM_CONTAINER; pwd; id -u; id -g',
      ]),
    );
    assert.equal(out, '1 yes\n/tmp\n1000\n1000\n');
  });

  it('the container and its execs run at oom_score_adj 0 (the agent keeps its -1000 to itself)', async () => {
    // The agent protects itself from the guest's OOM killer; a process that inherited -1000 would
    // leave the killer nothing to pick (dockerd's containers run at 0 too).
    assert.equal(ok(await docker(['exec', name, 'cat', '/proc/1/oom_score_adj'])), '0\n');
    assert.equal(ok(await docker(['exec', name, 'cat', '/proc/self/oom_score_adj'])), '0\n');
  });

  it('exec -i passes stdin and its EOF to the process', async () => {
    assert.equal(
      ok(await docker(['exec', '-i', name, 'cat'], 'hello stdin\nline 2\n')),
      'hello stdin\nline 2\n',
    );
  });

  it('exec -d returns at once and the process runs in the background', async () => {
    assert.equal(ok(await docker(['exec', '-d', name, 'sh', '-c', 'sleep 1; echo done > /tmp/marker'])), '');
    await waitFor(
      'the detached exec to write its marker',
      async () => (await docker(['exec', name, 'cat', '/tmp/marker'])).stdout === 'done\n',
      30_000,
    );
  });

  it('exec exit codes: the process status, 127 from sh, 126 for a missing or non-executable binary', async () => {
    assert.equal((await docker(['exec', name, 'sh', '-c', 'exit 3'])).code, 3);
    assert.equal((await docker(['exec', name, 'sh', '-c', 'nosuch-cmd'])).code, 127);
    const missing = await docker(['exec', name, 'nosuch']);
    assert.equal(missing.code, 126);
    assert.match(
      missing.stdout + missing.stderr,
      /OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": executable file not found in \$PATH: unknown/,
    );
    const notExecutable = await docker(['exec', name, '/etc']);
    assert.equal(notExecutable.code, 126);
    assert.match(notExecutable.stdout + notExecutable.stderr, /exec: "\/etc": permission denied/);
  });

  it('dockerode exec (as testcontainers): stdout and stderr apart, ExitCode and Pid in exec inspect', async () => {
    const r = await dockerodeExec(name, ['sh', '-c', 'echo hi; echo err >&2; exit 3']);
    assert.equal(r.stdout, 'hi\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(r.inspect.ExitCode, 3);
    assert.equal(r.inspect.Running, false);
    assert.ok(r.inspect.Pid > 0);
    assert.deepEqual(r.inspect.ProcessConfig.arguments, ['-c', 'echo hi; echo err >&2; exit 3']);
    const missing = await dockerodeExec(name, ['nosuch']);
    assert.equal(missing.inspect.ExitCode, 126);
    assert.equal(missing.inspect.Pid, 0);
  });

  it('a running exec is in ExecIDs and exec inspect says Running', async () => {
    const exec = await s.docker.getContainer(name).exec({ Cmd: ['sleep', '30'] });
    // dockerode answers a start with the response stream, even detached: drain it, or its
    // connection stays open and keeps the test process alive.
    const started = (await exec.start({ Detach: true })) as unknown as NodeJS.ReadableStream | undefined;
    started?.resume();
    const inspect = (await exec.inspect()) as unknown as ExecInspect;
    assert.equal(inspect.Running, true);
    assert.equal(inspect.ExitCode, null);
    const container = await s.docker.getContainer(name).inspect();
    assert.ok(
      (container.ExecIDs ?? []).includes(inspect.ID),
      `ExecIDs: ${JSON.stringify(container.ExecIDs)}`,
    );
    const top = ok(await docker(['top', name]));
    const lines = top.trim().split('\n');
    assert.match(lines[0] ?? '', /^UID\s+PID\s+PPID\s+C\s+STIME\s+TTY\s+TIME\s+CMD$/);
    assert.ok(
      lines.some((l) => /^root\s+\d+\s+\d+\s+\d+\s+\S+\s+\?\s+\d\d:\d\d:\d\d\s+sleep 1000$/.test(l)),
      top,
    );
    assert.ok(
      lines.some((l) => / sleep 30$/.test(l)),
      top,
    );
    // ps_args (issue 4): the BSD user format with the guest's figures, and a -o list.
    const aux = ok(await docker(['top', name, 'aux']))
      .trim()
      .split('\n');
    assert.match(
      aux[0] ?? '',
      /^USER\s+PID\s+%CPU\s+%MEM\s+VSZ\s+RSS\s+TTY\s+STAT\s+START\s+TIME\s+COMMAND$/,
    );
    assert.ok(
      aux.some((l) =>
        /^root\s+\d+\s+\d+\.\d\s+\d+\.\d\s+[1-9]\d*\s+[1-9]\d*\s+\?\s+S\S*\s+\d\d:\d\d\s+\d+:\d\d\s+sleep 1000$/.test(
          l,
        ),
      ),
      aux.join('\n'),
    );
    const custom = ok(await docker(['top', name, '-o', 'pid,comm']))
      .trim()
      .split('\n');
    assert.match(custom[0] ?? '', /^PID\s+COMMAND$/);
    assert.ok(
      custom.slice(1).every((l) => /^\d+\s+\S+$/.test(l)) && custom.some((l) => /^\d+\s+sleep$/.test(l)),
      custom.join('\n'),
    );
    // -l and -eLf: figures only the guest has (task flags, priority, wchan, threads).
    const long = ok(await docker(['top', name, '-l']))
      .trim()
      .split('\n');
    assert.match(
      long[0] ?? '',
      /^F\s+S\s+UID\s+PID\s+PPID\s+C\s+PRI\s+NI\s+ADDR\s+SZ\s+WCHAN\s+TTY\s+TIME\s+CMD$/,
    );
    assert.ok(
      long.some((l) =>
        /^[0-7]\s+S\s+0\s+\d+\s+\d+\s+\d+\s+80\s+0\s+-\s+[1-9]\d*\s+\S{1,6}\s+\?\s+\S+\s+sleep$/.test(l),
      ),
      long.join('\n'),
    );
    const threads = ok(await docker(['top', name, '-eLf']))
      .trim()
      .split('\n');
    assert.match(threads[0] ?? '', /^UID\s+PID\s+PPID\s+LWP\s+C\s+NLWP\s+STIME\s+TTY\s+TIME\s+CMD$/);
    // busybox is single-threaded: one row per process, its LWP its PID.
    assert.ok(
      threads.slice(1).every((l) => /^\S+\s+(\d+)\s+\d+\s+\1\s+\d+\s+1\s/.test(l)) && threads.length > 2,
      threads.join('\n'),
    );
    const noPid = await docker(['top', name, '-o', 'user,comm']);
    assert.notEqual(noPid.code, 0);
    assert.match(noPid.stderr, /Couldn't find PID field in ps output/);
  });

  it('docker stats --no-stream shows the guest memory and a CPU percentage', async () => {
    const out = ok(
      await docker([
        'stats',
        '--no-stream',
        '--format',
        '{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.MemPerc}} {{.PIDs}}',
        name,
      ]),
    );
    const m =
      /^(\S+) (\d+\.\d\d)% (\d+(?:\.\d+)?)(B|KiB|MiB) \/ (\d+(?:\.\d+)?)MiB (\d+\.\d\d)% (\d+)\n$/.exec(out);
    assert.ok(m, `unexpected stats line: ${JSON.stringify(out)}`);
    assert.equal(m[1], name);
    const limitMiB = Number(m[5]);
    // The VM's RAM (256 MiB by default) less what the kernel keeps.
    assert.ok(limitMiB > 150 && limitMiB <= 256, `limit ${limitMiB} MiB`);
    assert.ok(Number(m[7]) >= 1, 'at least the container process');
    const raw = (await s.docker.getContainer(name).stats({ stream: false })) as unknown as {
      memory_stats: { usage: number; limit: number; stats: Record<string, number> };
      cpu_stats: { cpu_usage: { total_usage: number }; system_cpu_usage: number; online_cpus: number };
      precpu_stats: { cpu_usage: { total_usage: number }; system_cpu_usage: number };
      pids_stats: { current: number };
      name: string;
    };
    assert.equal(raw.name, `/${name}`);
    assert.ok(raw.memory_stats.usage > 0);
    assert.ok(raw.cpu_stats.cpu_usage.total_usage > 0);
    assert.ok(raw.cpu_stats.system_cpu_usage > raw.precpu_stats.system_cpu_usage);
    assert.equal(raw.cpu_stats.online_cpus, 1);
    assert.ok('anon' in raw.memory_stats.stats);
  });

  it('exec into a container that is not running: 409 Container <id> is not running', async () => {
    const id = ok(await docker(['create', '--name', created, s.busybox, 'true'])).trim();
    const r = await docker(['exec', created, 'true']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), `Error response from daemon: Container ${id} is not running`);
  });

  it('exec of an unknown exec id: 404 No such exec instance', async () => {
    await assert.rejects(
      s.docker.getExec('0123456789abcdef').inspect(),
      (err: { statusCode?: number; message: string }) => {
        assert.equal(err.statusCode, 404);
        assert.match(err.message, /No such exec instance: 0123456789abcdef/);
        return true;
      },
    );
  });
});

describe('OOM in a VM sized by --memory', () => {
  before(async () => {
    s = await session();
  });

  it('a container that exhausts its memory exits 137 with State.OOMKilled true', async () => {
    const oom = `it-oom-${suffix}`;
    try {
      const r = await docker(['run', '--name', oom, '-m', '128m', s.busybox, 'sh', '-c', 'tail /dev/zero']);
      assert.equal(r.code, 137, `stderr: ${r.stderr}`);
      const [c] = JSON.parse(ok(await docker(['inspect', oom]))) as Array<{
        State: { OOMKilled: boolean; ExitCode: number; Status: string };
      }>;
      assert.equal(c?.State.ExitCode, 137);
      assert.equal(c?.State.OOMKilled, true);
      assert.equal(c?.State.Status, 'exited');
    } finally {
      await docker(['rm', '-f', oom]);
    }
  });
});
