/**
 * Restart policies, events, rename, update and json-file rotation through the real docker CLI
 * against a real capsuled whose containers run in QEMU micro-VMs. VM boots are slow under TCG, so
 * the suite boots six: three runs of one on-failure:2 container (shared by the tests that read
 * its events, logs and state), one `always` container that a stop must keep down, and one
 * `always` container that a private daemon must bring back after it restarts. Expected outputs
 * are what the reference dockerd 20.10 gives for the same commands.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { session, type Session } from './harness/session';
import { runCli, type CliResult } from './harness/cli';
import { TestDaemon, waitFor } from './harness/daemon';
import { findLeaks } from './harness/leaks';

let s: Session;
const docker = (args: string[]): Promise<CliResult> => runCli(s.cliEnv(), args);

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${r.stderr}`);
  return r.stdout;
}

const suffix = `${process.pid}`;
const label = `it.lifecycle=${suffix}`;
const onFailure = `it-onfail-${suffix}`;
const always = `it-always-${suffix}`;
const LINES_PER_RUN = 30;

/** A unix timestamp just ahead of now: `docker events --until` then ends at once. */
const untilNow = (): string => (Date.now() / 1000 + 0.05).toFixed(3);

interface Inspect {
  Id: string;
  Name: string;
  RestartCount: number;
  State: { Status: string; Running: boolean; Restarting: boolean; ExitCode: number };
  HostConfig: { RestartPolicy: { Name: string; MaximumRetryCount: number }; LogConfig: unknown };
  Config: { StopSignal?: string; StopTimeout?: number };
}

async function inspect(name: string): Promise<Inspect> {
  const [c] = JSON.parse(ok(await docker(['inspect', name]))) as Inspect[];
  assert.ok(c, `no inspect for ${name}`);
  return c;
}

// The session is shared by both suites below; closed once, after both.
after(async () => {
  await (await session()).close();
});

describe('container lifecycle with real VMs: restart policies, events, rename, update', () => {
  let since = '';
  let id = '';
  let firstWait: Promise<CliResult>;

  before(async () => {
    s = await session();
    since = (Date.now() / 1000 - 1).toFixed(3);
    // Three runs of one container: it exits 1, on-failure:2 restarts it twice.
    id = ok(
      await docker([
        'run',
        '-d',
        '--name',
        onFailure,
        '--restart',
        'on-failure:2',
        '--log-opt',
        'max-size=1k',
        '--log-opt',
        'max-file=3',
        '-l',
        label,
        s.busybox,
        'sh',
        '-c',
        `i=0; while [ $i -lt ${LINES_PER_RUN} ]; do echo line-$i; i=$((i+1)); done; exit 1`,
      ]),
    ).trim();
    // `docker wait` right away answers with the first exit (dockerd wakes waiters at every exit).
    firstWait = docker(['wait', onFailure]);
  });

  after(async () => {
    await docker(['rm', '-f', onFailure, `${onFailure}-renamed`, always]);
  });

  it('on-failure:2 restarts twice with backoff, then stays exited: RestartCount 2, ExitCode 1', async () => {
    assert.match(id, /^[0-9a-f]{64}$/);
    const seen = new Set<string>();
    const final = await waitFor(
      'three runs and the final exit',
      async () => {
        const c = await inspect(onFailure);
        seen.add(`${c.State.Status}:${c.RestartCount}`);
        return c.State.Status === 'exited' && c.RestartCount === 2 ? c : undefined;
      },
      240_000,
    );
    assert.ok(final);
    assert.equal(final.State.ExitCode, 1);
    assert.equal(final.State.Running, false);
    assert.equal(final.State.Restarting, false);
    assert.deepEqual(final.HostConfig.RestartPolicy, { Name: 'on-failure', MaximumRetryCount: 2 });
    assert.deepEqual(final.HostConfig.LogConfig, {
      Type: 'json-file',
      Config: { 'max-file': '3', 'max-size': '1k' },
    });
    const wait = await firstWait;
    assert.deepEqual([wait.code, wait.stdout], [0, '1\n']);
  });

  it('docker events replays create, start and die ×3 with filters on container, event, label and image', async () => {
    const until = untilNow();
    const all = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--filter',
        `label=${label}`,
        '--format',
        '{{.Type}} {{.Action}} {{.Actor.Attributes.name}}',
      ]),
    );
    assert.equal(
      all,
      ['create', 'start', 'die', 'start', 'die', 'start', 'die']
        .map((a) => `container ${a} ${onFailure}\n`)
        .join(''),
    );
    const dies = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--filter',
        `container=${onFailure}`,
        '--filter',
        'event=die',
        '--format',
        '{{.Status}} {{.ID}} {{.Actor.Attributes.exitCode}}',
      ]),
    );
    assert.equal(dies, `die ${id} 1\n`.repeat(3));
    // image= matches the repository without its tag too (dockerd strips it).
    const repo = s.busybox.slice(0, s.busybox.lastIndexOf(':'));
    const byImage = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--filter',
        `image=${repo}`,
        '--filter',
        `container=${id.slice(0, 12)}`,
        '--format',
        '{{.Action}}',
      ]),
    );
    assert.equal(byImage.split('\n').filter((l) => l !== '').length, 7);
    // The JSON fields docker-compose and testcontainers read.
    const [line] = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        until,
        '--filter',
        `container=${onFailure}`,
        '--filter',
        'event=create',
        '--format',
        '{{json .}}',
      ]),
    ).split('\n');
    const e = JSON.parse(line ?? '') as Record<string, unknown>;
    assert.equal(e.status, 'create');
    assert.equal(e.id, id);
    assert.equal(e.from, s.busybox);
    assert.equal(e.Type, 'container');
    assert.equal(e.Action, 'create');
    assert.equal(e.scope, 'local');
    assert.deepEqual(e.Actor, {
      ID: id,
      Attributes: { 'it.lifecycle': suffix, image: s.busybox, name: onFailure },
    });
    assert.equal(typeof e.time, 'number');
    assert.equal(typeof e.timeNano, 'number');
  });

  it('json-file rotation: <id>-json.log, .1, .2 on disk; docker logs reads across them in order', async () => {
    const dir = path.join(s.dataRoot, 'containers', id);
    const files = (await fs.readdir(dir)).filter((f) => f.startsWith(`${id}-json.log`)).sort();
    assert.deepEqual(files, [`${id}-json.log`, `${id}-json.log.1`, `${id}-json.log.2`]);
    for (const rotated of files.slice(1)) {
      const { size } = await fs.stat(path.join(dir, rotated));
      assert.ok(size >= 1000 && size < 1100, `${rotated}: ${size} bytes`);
    }
    const lines = ok(await docker(['logs', onFailure]))
      .split('\n')
      .filter((l) => l !== '');
    // The runs printed line-0 … line-29 three times; what is left is a contiguous tail of that.
    const everything = Array.from({ length: 3 * LINES_PER_RUN }, (_, i) => `line-${i % LINES_PER_RUN}`);
    assert.ok(lines.length > 26 && lines.length < 45, `${lines.length} lines kept`);
    assert.deepEqual(lines, everything.slice(everything.length - lines.length));
    assert.deepEqual(ok(await docker(['logs', '--tail', '2', onFailure])), 'line-28\nline-29\n');
  });

  it('docker rename publishes rename with oldName; docker update --restart changes the policy of an exited container', async () => {
    const renamed = `${onFailure}-renamed`;
    ok(await docker(['rename', onFailure, renamed]));
    const events = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        untilNow(),
        '--filter',
        `container=${id}`,
        '--filter',
        'event=rename',
        '--format',
        '{{.Actor.Attributes.oldName}} {{.Actor.Attributes.name}}',
      ]),
    );
    assert.equal(events, `/${onFailure} ${renamed}\n`);
    assert.deepEqual(ok(await docker(['update', '--restart', 'unless-stopped', renamed])), `${renamed}\n`);
    const c = await inspect(renamed);
    assert.equal(c.Name, `/${renamed}`);
    assert.deepEqual(c.HostConfig.RestartPolicy, { Name: 'unless-stopped', MaximumRetryCount: 0 });
    assert.equal(c.State.Status, 'exited', 'update does not start the container');
    const bad = await docker(['update', '--restart', 'always:3', renamed]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /maximum retry count cannot be used with restart policy 'always'/);
  });

  it('docker stop of an always container uses --stop-signal, cancels the restart and keeps it stopped', async () => {
    ok(
      await docker([
        'run',
        '-d',
        '--name',
        always,
        '--restart',
        'always',
        '--stop-signal',
        'SIGUSR1',
        '--stop-timeout',
        '20',
        '-l',
        label,
        s.busybox,
        'sh',
        '-c',
        'trap "exit 7" USR1; echo ready; while true; do sleep 1; done',
      ]),
    );
    await waitFor(
      'the trap to be set',
      async () => ok(await docker(['logs', always])).includes('ready'),
      120_000,
    );
    const started = Date.now();
    const since2 = (started / 1000).toFixed(3);
    assert.equal(ok(await docker(['stop', always])), `${always}\n`);
    assert.ok(Date.now() - started < 15_000, 'the stop signal ended it, not the timeout');
    const c = await inspect(always);
    assert.equal(c.State.ExitCode, 7);
    assert.equal(c.Config.StopSignal, 'SIGUSR1');
    assert.equal(c.Config.StopTimeout, 20);
    const events = ok(
      await docker([
        'events',
        '--since',
        since2,
        '--until',
        untilNow(),
        '--filter',
        `container=${always}`,
        '--format',
        '{{.Action}}={{index .Actor.Attributes "signal"}}{{index .Actor.Attributes "exitCode"}}',
      ]),
    );
    assert.equal(events, 'kill=10\ndie=7\nstop=\n');
    // No restart follows a manual stop (dockerd would have restarted within 100 ms).
    await new Promise((r) => setTimeout(r, 2000));
    const later = await inspect(always);
    assert.equal(later.State.Status, 'exited');
    assert.equal(later.RestartCount, 0);
  });

  it('docker container prune --filter label removes the stopped containers it matches', async () => {
    const out = ok(await docker(['container', 'prune', '-f', '--filter', `label=${label}`]));
    assert.match(out, /^Deleted Containers:\n([0-9a-f]{64}\n){2}\nTotal reclaimed space: /);
    const left = ok(await docker(['ps', '-aq', '--filter', `label=${label}`]));
    assert.equal(left, '');
  });
});

describe('restart policies across a daemon restart (private daemon, real VMs)', () => {
  it('an always container runs again after capsuled restarts, with RestartCount 0 and a new VM', async () => {
    const shared = await session();
    const daemon = await TestDaemon.start();
    const run = (args: string[]): Promise<CliResult> => runCli(daemon.cliEnv(), args);
    try {
      const name = `it-restore-${suffix}`;
      ok(await run(['run', '-d', '--name', name, '--restart', 'always', shared.busybox, 'sleep', '600']));
      const firstPid = Number(ok(await run(['inspect', '-f', '{{.State.Pid}}', name])).trim());
      assert.ok(firstPid > 0);
      // dockerd starts only containers that were started before (no VM needed for this one).
      ok(await run(['create', '--name', `${name}-created`, '--restart', 'always', shared.busybox, 'true']));

      await daemon.restart();
      const restored = await waitFor(
        'the always container to run again',
        async () => {
          const [c] = JSON.parse(ok(await run(['inspect', name]))) as Array<{
            State: { Status: string; Pid: number };
            RestartCount: number;
          }>;
          return c?.State.Status === 'running' ? c : undefined;
        },
        180_000,
      );
      assert.ok(restored);
      assert.notEqual(restored.State.Pid, firstPid, 'a new VM');
      assert.equal(restored.RestartCount, 0);
      assert.equal(
        ok(await run(['inspect', '-f', '{{.State.Status}}', `${name}-created`])).trim(),
        'created',
        'a container never started is not started by its policy',
      );
      const events = ok(
        await run([
          'events',
          '--since',
          '10m',
          '--until',
          untilNow(),
          '--filter',
          `container=${name}`,
          '--format',
          '{{.Action}}',
        ]),
      );
      assert.equal(
        events,
        'start\n',
        'the new daemon starts with an empty events buffer, then the restore start',
      );
      ok(await run(['rm', '-f', name, `${name}-created`]));
    } finally {
      await daemon.cleanup();
    }
    assert.deepEqual(await findLeaks(daemon.execRoot), []);
  });
});
