/**
 * Healthchecks through the real docker CLI against a real capsuled whose containers run in QEMU
 * micro-VMs (each probe is an exec in the guest). Expected texts and JSON are what the reference
 * dockerd 20.10 gives for the same commands. Intervals are 1 s so the file stays short under TCG;
 * the probe's outcome is switched by the test (an exec that creates the file the probe tests), so
 * the order starting → unhealthy → healthy does not depend on how fast the VM is.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { session, type Session } from './harness/session';
import { runCli, type CliResult } from './harness/cli';
import { waitFor } from './harness/daemon';

let s: Session;
const docker = (args: string[]): Promise<CliResult> => runCli(s.cliEnv(), args);

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `exit ${r.code}; stdout: ${r.stdout}; stderr: ${r.stderr}`);
  return r.stdout;
}

const suffix = `${process.pid}`;
const probed = `it-health-${suffix}`;
const slow = `it-health-timeout-${suffix}`;
const fromImage = `it-health-image-${suffix}`;
const disabled = `it-health-none-${suffix}`;
const image = `it-health-img-${suffix}:latest`;

interface HealthLogEntry {
  Start: string;
  End: string;
  ExitCode: number;
  Output: string;
}
interface Health {
  Status: string;
  FailingStreak: number;
  Log: HealthLogEntry[];
}

const RFC3339_NANO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/;

/** State.Health as `docker inspect -f '{{json .State.Health}}'` prints it, checked for dockerd's shape. */
async function health(container: string): Promise<Health | null> {
  const raw = ok(await docker(['inspect', '-f', '{{json .State.Health}}', container])).trim();
  if (raw === 'null') return null;
  // dockerd's field order (moby types.Health / HealthcheckResult).
  assert.match(raw, /^\{"Status":"[a-z]+","FailingStreak":\d+,"Log":\[/, raw);
  const h = JSON.parse(raw) as Health;
  for (const entry of h.Log) {
    assert.deepEqual(Object.keys(entry), ['Start', 'End', 'ExitCode', 'Output'], raw);
    assert.match(entry.Start, RFC3339_NANO);
    assert.match(entry.End, RFC3339_NANO);
    assert.ok(Date.parse(entry.End) >= Date.parse(entry.Start), raw);
  }
  assert.ok(h.Log.length <= 5, `at most 5 log entries: ${raw}`);
  return h;
}

async function status(container: string): Promise<string> {
  return ok(await docker(['ps', '-a', '--filter', `name=^${container}$`, '--format', '{{.Status}}'])).trim();
}

async function namesWithHealth(value: string): Promise<string[]> {
  const out = ok(await docker(['ps', '-a', '--filter', `health=${value}`, '--format', '{{.Names}}']));
  return out.split('\n').filter(Boolean);
}

async function waitForHealth(container: string, wanted: string, timeoutMs = 60_000): Promise<Health> {
  let found: Health | undefined;
  await waitFor(
    `${container} to become ${wanted}`,
    async () => {
      const h = await health(container);
      if (h?.Status === wanted) found = h;
      return found;
    },
    timeoutMs,
  );
  assert.ok(found);
  return found;
}

// Rounded up: an event in the current second is included.
const nowSeconds = (): string => `${Math.ceil(Date.now() / 1000)}`;

after(async () => {
  await docker(['rm', '-f', probed, slow, fromImage, disabled]);
  await docker(['rmi', '-f', image]);
  await (await session()).close();
});

describe('healthchecks with real VMs', () => {
  let since: string;
  let probedId: string;

  before(async () => {
    s = await session();
    since = `${Math.floor(Date.now() / 1000) - 1}`;
  });

  it('--health-cmd: "(health: starting)", then "(unhealthy)" after --health-retries failures', async () => {
    probedId = ok(
      await docker([
        'run',
        '-d',
        '--name',
        probed,
        '--health-cmd',
        'test -f /tmp/ok',
        '--health-interval',
        '1s',
        '--health-retries',
        '2',
        s.busybox,
        'sleep',
        '1000',
      ]),
    ).trim();
    // Two failures 1 s apart are needed before "unhealthy": it is still starting right after the run.
    assert.match(await status(probed), /^Up (Less than a second|\d+ seconds?) \(health: starting\)$/);
    const starting = await health(probed);
    assert.deepEqual({ ...starting, Log: [] }, { Status: 'starting', FailingStreak: 0, Log: [] });
    assert.equal(
      ok(await docker(['inspect', '-f', '{{json .Config.Healthcheck}}', probed])).trim(),
      '{"Test":["CMD-SHELL","test -f /tmp/ok"],"Interval":1000000000,"Retries":2}',
    );

    const unhealthy = await waitForHealth(probed, 'unhealthy');
    assert.ok(unhealthy.FailingStreak >= 2, JSON.stringify(unhealthy));
    assert.ok(unhealthy.Log.length >= 2);
    for (const entry of unhealthy.Log) assert.deepEqual([entry.ExitCode, entry.Output], [1, '']);
    assert.match(await status(probed), /^Up \d+ seconds? \(unhealthy\)$/);
    assert.ok((await namesWithHealth('unhealthy')).includes(probed));
    assert.ok(!(await namesWithHealth('healthy')).includes(probed));
    assert.ok(!(await namesWithHealth('none')).includes(probed));
  });

  it('a passing probe makes it "(healthy)" and resets FailingStreak; ps --filter health=healthy', async () => {
    ok(await docker(['exec', probed, 'touch', '/tmp/ok']));
    const healthy = await waitForHealth(probed, 'healthy');
    assert.equal(healthy.FailingStreak, 0);
    const last = healthy.Log[healthy.Log.length - 1];
    assert.deepEqual([last?.ExitCode, last?.Output], [0, '']);
    assert.match(await status(probed), /^Up \d+ seconds? \(healthy\)$/);
    assert.ok((await namesWithHealth('healthy')).includes(probed));
    assert.ok(!(await namesWithHealth('unhealthy')).includes(probed));
  });

  it('docker events --filter event=health_status: one event per status change, as dockerd prints them', async () => {
    const out = ok(
      await docker([
        'events',
        '--since',
        since,
        '--until',
        nowSeconds(),
        '--filter',
        'event=health_status',
        '--filter',
        `container=${probed}`,
      ]),
    );
    const lines = out.trim().split('\n');
    const attrs = `\\(image=${s.busybox.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, name=${probed}\\)`;
    assert.equal(lines.length, 2, out);
    assert.match(
      lines[0] ?? '',
      new RegExp(`^\\S+ container health_status: unhealthy ${probedId} ${attrs}$`),
    );
    assert.match(lines[1] ?? '', new RegExp(`^\\S+ container health_status: healthy ${probedId} ${attrs}$`));
  });

  it('probing stops with the container (no new Log entries); docker restart begins at "starting" again', async () => {
    ok(await docker(['stop', '-t', '1', probed]));
    const stopped = await health(probed);
    // dockerd marks the health "unhealthy" when its monitor stops; streak and log are kept.
    assert.equal(stopped?.Status, 'unhealthy');
    assert.equal(stopped?.FailingStreak, 0, JSON.stringify(stopped));
    assert.match(await status(probed), /^Exited \(137\) /);
    await new Promise((r) => setTimeout(r, 2500));
    assert.deepEqual(await health(probed), stopped, 'no probes after the stop');

    ok(await docker(['restart', '-t', '1', probed]));
    const restarted = await health(probed);
    assert.equal(restarted?.Status, 'starting');
    assert.equal(restarted?.FailingStreak, 0);
    assert.deepEqual(restarted?.Log, stopped?.Log, 'the log is kept across the restart');
    assert.match(await status(probed), /\(health: starting\)$/);
    // /tmp/ok is in the container's filesystem and survives the restart.
    const healthy = await waitForHealth(probed, 'healthy');
    assert.ok(healthy.Log.some((e) => !stopped?.Log.some((o) => o.Start === e.Start)));
    ok(await docker(['rm', '-f', probed]));
  });

  it('a probe past --health-timeout is killed and logged with -1 "Health check exceeded timeout (1s)"', async () => {
    ok(
      await docker([
        'run',
        '-d',
        '--name',
        slow,
        '--health-cmd',
        'sleep 5',
        '--health-interval',
        '1s',
        '--health-timeout',
        '1s',
        '--health-retries',
        '1',
        s.busybox,
        'sleep',
        '1000',
      ]),
    );
    const h = await waitForHealth(slow, 'unhealthy');
    assert.ok(h.FailingStreak >= 1);
    for (const entry of h.Log) {
      assert.deepEqual([entry.ExitCode, entry.Output], [-1, 'Health check exceeded timeout (1s)']);
      const tookMs = Date.parse(entry.End) - Date.parse(entry.Start);
      assert.ok(tookMs >= 900 && tookMs < 4500, `probe took ${tookMs} ms`);
    }
    assert.match(await status(slow), /\(unhealthy\)$/);
    ok(await docker(['rm', '-f', slow]));
  });

  it('an image HEALTHCHECK (docker commit --change) is used by run; --no-healthcheck disables it', async () => {
    ok(await docker(['create', '--name', fromImage, '--health-retries', '2', s.busybox, 'sleep', '1000']));
    ok(await docker(['commit', '--change', 'HEALTHCHECK --interval=1s CMD true', fromImage, image]));
    ok(await docker(['rm', '-f', fromImage]));
    // Shell form (no JSON array) is CMD-SHELL; the committed container's Retries are kept.
    assert.equal(
      ok(await docker(['image', 'inspect', '-f', '{{json .Config.Healthcheck}}', image])).trim(),
      '{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":2}',
    );

    ok(await docker(['run', '-d', '--name', fromImage, image, 'sleep', '1000']));
    ok(await docker(['run', '-d', '--name', disabled, '--no-healthcheck', image, 'sleep', '1000']));
    const h = await waitForHealth(fromImage, 'healthy');
    assert.equal(h.FailingStreak, 0);
    assert.deepEqual([h.Log[0]?.ExitCode, h.Log[0]?.Output], [0, '']);
    assert.match(await status(fromImage), /\(healthy\)$/);

    assert.equal(await health(disabled), null);
    assert.equal(
      ok(await docker(['inspect', '-f', '{{json .Config.Healthcheck}}', disabled])).trim(),
      '{"Test":["NONE"],"Interval":1000000000,"Retries":2}',
    );
    assert.match(await status(disabled), /^Up (Less than a second|\d+ seconds?)$/);
    const none = await namesWithHealth('none');
    assert.ok(none.includes(disabled) && !none.includes(fromImage), none.join(','));
  });
});
