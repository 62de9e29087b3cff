/**
 * Healthchecks through the real API server on a daemon built on the fakes (probes run as execs in
 * FakeSandboxRuntime's fake shell): State.Health, the Status column, `health` filters and the
 * health_status events, as dockerd 20.10 reports them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Docker from 'dockerode';
import { containerEvents, request } from './testing/http';
import { startHarness, type Harness } from './testing/harness';

let h: Harness;
let docker: Docker;

before(async () => {
  h = await startHarness();
  docker = new Docker({ socketPath: h.socketPath });
});
after(async () => {
  await h.close();
});

const MS = 1_000_000;

/** Retries `check` until it stops throwing (an assertion) or the time is up. */
async function eventually(check: () => Promise<void>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

interface Health {
  Status: string;
  FailingStreak: number;
  Log: Array<{ Start: string; End: string; ExitCode: number; Output: string }>;
}

async function health(id: string): Promise<Health | undefined> {
  const r = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/json`);
  return r.json<{ State: { Health?: Health } }>().State.Health;
}

async function runWith(healthcheck: object, name: string): Promise<string> {
  const c = await docker.createContainer({
    name,
    Image: 'busybox',
    Cmd: ['sleep', '1000'],
    Healthcheck: healthcheck,
  });
  await c.start();
  return c.id;
}

describe('healthchecks', () => {
  it('a passing probe: starting, then healthy with its output logged; Status "(healthy)"; health_status event', async () => {
    const since = Math.floor(Date.now() / 1000);
    const id = await runWith({ Test: ['CMD-SHELL', 'echo all good'], Interval: 100 * MS }, 'hc-ok');
    assert.equal((await health(id))?.Status, 'starting');
    await eventually(async () => assert.equal((await health(id))?.Status, 'healthy'), 5000);
    const hs = (await health(id)) as Health;
    assert.equal(hs.FailingStreak, 0);
    assert.equal(hs.Log[0]?.ExitCode, 0);
    assert.equal(hs.Log[0]?.Output, 'all good\n');
    const list = await request(
      h.socketPath,
      'GET',
      `/v1.41/containers/json?filters=${encodeURIComponent(JSON.stringify({ health: ['healthy'] }))}`,
    );
    const rows = list.json<Array<{ Id: string; Status: string }>>();
    assert.deepEqual(
      rows.map((r) => r.Id),
      [id],
    );
    assert.match(rows[0]?.Status ?? '', /^Up .* \(healthy\)$/);
    const actions = (await containerEvents(h.socketPath, id, since)).map((e) => e.Action);
    assert.ok(actions.includes('health_status: healthy'), actions.join(', '));
    assert.equal(actions.filter((a) => a.startsWith('health_status')).length, 1, 'one event per change');
    assert.ok(
      actions.some((a) => a.startsWith('exec_create: /bin/sh -c echo all good')),
      actions.join(', '),
    );
    await docker.getContainer(id).remove({ force: true });
  });

  it('failing probes: unhealthy after Retries, FailingStreak counts, Log keeps the last 5', async () => {
    const id = await runWith(
      { Test: ['CMD', 'sh', '-c', 'echo bad >&2; exit 3'], Interval: 50 * MS, Retries: 2 },
      'hc-bad',
    );
    await eventually(async () => assert.equal((await health(id))?.Status, 'unhealthy'), 5000);
    await eventually(async () => assert.equal((await health(id))?.Log.length, 5), 5000);
    const hs = (await health(id)) as Health;
    assert.ok(hs.FailingStreak >= 5, String(hs.FailingStreak));
    assert.deepEqual([...new Set(hs.Log.map((r) => `${r.ExitCode}:${r.Output}`))], ['3:bad\n']);
    const filtered = await request(
      h.socketPath,
      'GET',
      `/v1.41/containers/json?filters=${encodeURIComponent(JSON.stringify({ health: ['unhealthy'] }))}`,
    );
    assert.deepEqual(
      filtered.json<Array<{ Id: string }>>().map((r) => r.Id),
      [id],
    );
    // Probes are not kept as execs once they ended.
    const inspect = await request(h.socketPath, 'GET', `/v1.41/containers/${id}/json`);
    assert.ok((inspect.json<{ ExecIDs: string[] | null }>().ExecIDs ?? []).length <= 1);
    await docker.getContainer(id).remove({ force: true });
  });

  it('a probe that cannot start is logged with -1 and the error; NONE and no healthcheck have no State.Health', async () => {
    const id = await runWith({ Test: ['CMD', 'no-such-probe'], Interval: 50 * MS, Retries: 1 }, 'hc-missing');
    await eventually(async () => assert.equal((await health(id))?.Status, 'unhealthy'), 5000);
    const entry = (await health(id))?.Log[0];
    assert.equal(entry?.ExitCode, -1);
    assert.match(entry?.Output ?? '', /executable file not found in \$PATH/);
    const none = await runWith({ Test: ['NONE'] }, 'hc-none');
    assert.equal(await health(none), undefined);
    const list = await request(
      h.socketPath,
      'GET',
      `/v1.41/containers/json?filters=${encodeURIComponent(JSON.stringify({ health: ['none'] }))}`,
    );
    assert.ok(list.json<Array<{ Id: string }>>().some((r) => r.Id === none));
    const bad = await request(
      h.socketPath,
      'GET',
      `/v1.41/containers/json?filters=${encodeURIComponent(JSON.stringify({ health: ['sick'] }))}`,
    );
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.json(), { message: 'Unrecognised filter value for health: sick' });
    for (const c of [id, none]) await docker.getContainer(c).remove({ force: true });
  });

  it('probing stops once the container stopped; a new start begins "starting" again', async () => {
    const id = await runWith({ Test: ['CMD-SHELL', 'exit 0'], Interval: 50 * MS }, 'hc-stop');
    await eventually(async () => assert.equal((await health(id))?.Status, 'healthy'), 5000);
    await docker.getContainer(id).stop({ t: 1 });
    // dockerd marks the health "unhealthy" when its monitor stops (streak and log kept), in the
    // step that records the exit: it shows as soon as `docker stop` returns, not a moment later.
    const stopped = await health(id);
    assert.equal(stopped?.Status, 'unhealthy');
    assert.equal(stopped?.FailingStreak, 0);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await health(id), stopped, 'no probes after the exit');
    await docker.getContainer(id).start();
    assert.equal((await health(id))?.Status, 'starting');
    await eventually(async () => assert.equal((await health(id))?.Status, 'healthy'), 5000);
    await docker.getContainer(id).remove({ force: true });
  });
});
