/**
 * docker pause/unpause and published ports in the daemon, against the fake runtime: dockerd 20.10's
 * checks, texts and events, and what stop, kill and rm do with a paused container.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';
import { errorCodeOf } from '../common/errdefs';
import type { Daemon } from './daemon';
import type { FakeSandboxRuntime } from './testing/fakes';
import { useDaemonFixture } from './testing/fixture';
import type { DaemonEvent } from './types';

const fixture = useDaemonFixture('capsule-pause-');
const { create } = fixture;
let runtime: FakeSandboxRuntime;
let daemon: Daemon;
// A fresh daemon for every test (the fixture's hook runs first): name the current one's parts.
beforeEach(() => ({ runtime, daemon } = fixture));

function actions(id: string): string[] {
  const seen: string[] = [];
  daemon.subscribeEvents({ filters: {} }, (e: DaemonEvent) => {
    if (e.actor.id === id) seen.push(e.action);
  });
  return seen;
}

async function rejection(p: Promise<unknown>): Promise<{ code: string | undefined; message: string }> {
  try {
    await p;
  } catch (err) {
    return { code: errorCodeOf(err), message: (err as Error).message };
  }
  throw new Error('expected a rejection');
}

describe('docker pause / unpause', () => {
  it('pauses the VM (State.Paused, status paused, events) and unpauses it', async () => {
    const id = await create(['sleep', '100']);
    await daemon.containerStart(id);
    const seen = actions(id);
    await daemon.containerPause(id);
    const sandbox = runtime.latest(id);
    assert.equal(sandbox?.paused, true);
    const view = daemon.containerInspect(id);
    assert.equal(view.status, 'paused');
    assert.equal(view.state.paused, true);
    assert.equal(view.state.running, true);
    await daemon.containerUnpause(id);
    assert.equal(sandbox?.paused, false);
    assert.equal(daemon.containerInspect(id).status, 'running');
    assert.deepEqual(seen, ['pause', 'unpause']);
  });

  it("answers 409 with dockerd's texts", async () => {
    const id = await create(['sleep', '100']);
    assert.deepEqual(await rejection(daemon.containerPause(id)), {
      code: 'Conflict',
      message: `Container ${id} is not running`,
    });
    assert.deepEqual(await rejection(daemon.containerUnpause(id)), {
      code: 'Conflict',
      message: `Container ${id} is not paused`,
    });
    await daemon.containerStart(id);
    assert.deepEqual(await rejection(daemon.containerUnpause(id)), {
      code: 'Conflict',
      message: `Container ${id} is not paused`,
    });
    await daemon.containerPause(id);
    assert.deepEqual(await rejection(daemon.containerPause(id)), {
      code: 'Conflict',
      message: `Container ${id} is already paused`,
    });
    assert.deepEqual(await rejection(daemon.containerRemove(id, { force: false, removeVolumes: false })), {
      code: 'Conflict',
      message:
        `You cannot remove a paused container ${id}. ` +
        'Unpause and then stop the container before attempting removal or force remove',
    });
  });

  it('stop of a paused container resumes it first (unpause event), then stops it', async () => {
    const id = await create(['sleep', '100']);
    await daemon.containerStart(id);
    await daemon.containerPause(id);
    const seen = actions(id);
    await daemon.containerStop(id, {});
    assert.equal(runtime.latest(id)?.paused, false);
    const view = daemon.containerInspect(id);
    assert.equal(view.status, 'exited');
    assert.equal(view.state.paused, false);
    assert.deepEqual(seen, ['unpause', 'kill', 'die', 'stop']);
  });

  it('kill with a signal other than the stop signal leaves the container paused; SIGKILL ends it', async () => {
    const id = await create(['sleep', '100'], { config: { stopSignal: 'SIGUSR1' } });
    await daemon.containerStart(id);
    await daemon.containerPause(id);
    await daemon.containerKill(id, 'SIGWINCH');
    assert.equal(daemon.containerInspect(id).status, 'paused');
    await daemon.containerKill(id, 'KILL');
    const view = daemon.containerInspect(id);
    assert.equal(view.status, 'exited');
    assert.equal(view.state.exitCode, 137);
  });

  it('rm -f removes a paused container', async () => {
    const id = await create(['sleep', '100']);
    await daemon.containerStart(id);
    await daemon.containerPause(id);
    await daemon.containerRemove(id, { force: true, removeVolumes: false });
    assert.equal(
      (await rejection(Promise.resolve().then(() => daemon.containerInspect(id)))).code,
      'NotFound',
    );
  });
});

describe('published ports in the daemon', () => {
  it('passes the bindings to the runtime and reports them while running, {} once stopped', async () => {
    const id = await create(['sleep', '100'], {
      config: { exposedPorts: { '443/tcp': {} } },
      host: { portBindings: { '80/tcp': [{ hostIp: '127.0.0.1', hostPort: '0' }] } },
    });
    await daemon.containerStart(id);
    const forwards = runtime.latest(id)?.spec.portForwards ?? [];
    assert.equal(forwards.length, 1);
    assert.equal(forwards[0]?.hostAddr, '127.0.0.1');
    assert.equal(forwards[0]?.guestPort, 80);
    assert.ok((forwards[0]?.hostPort ?? 0) > 0);
    assert.deepEqual(daemon.containerInspect(id).ports, {
      '443/tcp': null,
      '80/tcp': [{ hostIp: '127.0.0.1', hostPort: String(forwards[0]?.hostPort) }],
    });
    await daemon.containerStop(id, { timeout: 0 });
    assert.deepEqual(daemon.containerInspect(id).ports, {});
  });

  it('a bad port specification fails the create with 400', async () => {
    const err = await rejection(
      create(['true'], { host: { portBindings: { '80/tcp': [{ hostIp: '', hostPort: 'x' }] } } }),
    );
    assert.deepEqual(err, { code: 'InvalidParameter', message: 'invalid port specification: "x"' });
  });
});

describe('container options in the daemon', () => {
  it('passes HostConfig options to the runtime', async () => {
    const id = await create(['sleep', '100'], {
      host: {
        passthrough: {
          ReadonlyRootfs: true,
          ShmSize: 1048576,
          Tmpfs: { '/run': 'size=1m' },
          CapAdd: ['sys_admin'],
          CapDrop: null,
          Privileged: false,
          Ulimits: [{ Name: 'nofile', Soft: 10, Hard: 20 }],
          Init: true,
        },
      },
    });
    await daemon.containerStart(id);
    assert.deepEqual(runtime.latest(id)?.spec.options, {
      readonlyRootfs: true,
      shmSizeBytes: 1048576,
      tmpfs: { '/run': 'size=1m' },
      capAdd: ['sys_admin'],
      capDrop: [],
      privileged: false,
      ulimits: [{ name: 'nofile', soft: 10, hard: 20 }],
      init: true,
      memoryLimitBytes: 0,
    });
  });

  it('an unknown capability fails the create (400); a bad tmpfs option fails the start (500) before any VM', async () => {
    assert.deepEqual(await rejection(create(['true'], { host: { passthrough: { CapAdd: ['bogus'] } } })), {
      code: 'InvalidParameter',
      message: 'invalid CapAdd: unknown capability: "CAP_BOGUS"',
    });
    const id = await create(['true'], { host: { passthrough: { Tmpfs: { '/x': 'bogus' } } } });
    assert.deepEqual(await rejection(daemon.containerStart(id)), {
      code: 'System',
      message: 'invalid tmpfs option ["bogus"]',
    });
    assert.equal(runtime.latest(id), undefined);
    const view = daemon.containerInspect(id);
    assert.equal(view.status, 'created');
    assert.equal(view.state.exitCode, 128);
  });
});
