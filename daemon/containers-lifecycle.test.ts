/**
 * Restart policies, rename, update, prune and the events of the lifecycle, against the fake
 * runtime (fast: fake exits, and a manual clock where the backoff matters).
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { beforeEach, describe, it } from 'node:test';
import { createSilentLogger } from '../common/logger';
import { UnavailableError, errorCodeOf } from '../common/errdefs';
import { ContainerService } from './containers';
import type { Daemon } from './daemon';
import { EventsBus } from './events';
import type { RestartClock } from './restart';
import { ContainerStore } from './store';
import type { FakeImageService, FakeSandboxRuntime } from './testing/fakes';
import { containerConfig, hostConfig, recordEvents, until, useDaemonFixture } from './testing/fixture';
import type { RestartPolicy } from './types';

const fixture = useDaemonFixture('capsule-lifecycle-');
const { create, newDaemon } = fixture;
let images: FakeImageService;
let runtime: FakeSandboxRuntime;
let daemon: Daemon;
// A fresh daemon for every test (the fixture's hook runs first): name the current one's parts.
beforeEach(() => ({ images, runtime, daemon } = fixture));

const policy = (name: string, maximumRetryCount = 0): RestartPolicy => ({ name, maximumRetryCount });

const statusOf = (d: Daemon, ref: string): string => d.containerInspect(ref).status;

describe('restart policies', () => {
  it('on-failure:2 restarts twice (RestartCount 2), then stays exited; die at every exit, no restart event', async () => {
    const events = recordEvents(daemon);
    const id = await create(['sh', '-c', 'echo run; exit 1'], {
      host: { restartPolicy: policy('on-failure', 2) },
    });
    await daemon.containerStart(id);
    await until(
      'three runs',
      () => runtime.sandboxes.length === 3 && events.filter((e) => e.action === 'die').length === 3,
    );
    const c = await until('exited', () => {
      const v = daemon.containerInspect(id);
      return v.status === 'exited' ? v : undefined;
    });
    assert.equal(c.restartCount, 2);
    assert.equal(c.state.exitCode, 1);
    assert.equal(c.state.restarting, false);
    assert.deepEqual(
      events.map((e) => e.action),
      ['create', 'start', 'die', 'start', 'die', 'start', 'die'],
    );
    const { entries } = await daemon.containerLogs(id, { stdout: true, stderr: true, follow: false });
    const lines: string[] = [];
    for await (const e of entries) lines.push(e.data.toString());
    assert.deepEqual(lines, ['run\n', 'run\n', 'run\n']);
  });

  it('on-failure does not restart after exit 0; no does not restart at all', async () => {
    const ok = await create(['true'], { host: { restartPolicy: policy('on-failure') } });
    const no = await create(['false'], { host: { restartPolicy: policy('no') } });
    for (const id of [ok, no]) {
      const waited = daemon.containerWait(id, 'next-exit');
      await daemon.containerStart(id);
      await waited.result;
    }
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(runtime.sandboxes.length, 2);
    assert.equal(daemon.containerInspect(ok).restartCount, 0);
    assert.equal(daemon.containerInspect(no).status, 'exited');
  });

  it('while waiting for its restart the container is "restarting": Running and Restarting true, Pid 0', async () => {
    const id = await create(['sh', '-c', 'exit 3'], { host: { restartPolicy: policy('always') } });
    const waited = daemon.containerWait(id, 'next-exit');
    await daemon.containerStart(id);
    assert.deepEqual(await waited.result, { statusCode: 3, error: null });
    const c = daemon.containerInspect(id);
    assert.equal(c.status, 'restarting');
    assert.equal(c.state.running, true);
    assert.equal(c.state.restarting, true);
    assert.equal(c.state.pid, 0);
    assert.equal(c.state.exitCode, 3);
    assert.equal(c.restartCount, 1);
    // `docker rm` without force refuses, naming the state as dockerd does.
    await assert.rejects(daemon.containerRemove(id, { force: false, removeVolumes: false }), {
      message: new RegExp(`^You cannot remove a restarting container ${id}\\. Stop the container`),
    });
    // A manual start of a restarting container is 304, as for a running one.
    await assert.rejects(daemon.containerStart(id), (err) => errorCodeOf(err) === 'NotModified');
    await daemon.containerStop(id, {});
  });

  it('docker stop of a restarting container cancels the restart: exited with its code, only a stop event', async () => {
    const id = await create(['sh', '-c', 'exit 3'], { host: { restartPolicy: policy('always') } });
    const waited = daemon.containerWait(id, 'next-exit');
    await daemon.containerStart(id);
    await waited.result;
    await until('restarting', () => statusOf(daemon, id) === 'restarting' && runtime.sandboxes.length === 1);
    const notRunning = daemon.containerWait(id, 'not-running');
    const events = recordEvents(daemon);
    await daemon.containerStop(id, {});
    assert.deepEqual(await notRunning.result, { statusCode: 3, error: null });
    const c = daemon.containerInspect(id);
    assert.equal(c.status, 'exited');
    assert.equal(c.state.exitCode, 3);
    assert.equal(c.hasBeenManuallyStopped, true);
    assert.deepEqual(
      events.map((e) => e.action),
      ['stop'],
    );
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(runtime.sandboxes.length, 1, 'no restart after the stop');
  });

  it('a manual stop of a running always container is not restarted; a manual start resets RestartCount', async () => {
    const id = await create(['sh', '-c', 'sleep 100'], { host: { restartPolicy: policy('always') } });
    await daemon.containerStart(id);
    await daemon.containerStop(id, {});
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(statusOf(daemon, id), 'exited');
    assert.equal(daemon.containerInspect(id).state.exitCode, 143);
    assert.equal(runtime.sandboxes.length, 1);

    // docker kill (no StopSignal configured: any signal) cancels the restart too.
    await daemon.containerStart(id);
    await daemon.containerKill(id, 'HUP');
    await daemon.containerWait(id, 'not-running').result;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(statusOf(daemon, id), 'exited');
    assert.equal(daemon.containerInspect(id).state.exitCode, 129);
  });

  it('kill with a signal other than the configured StopSignal does not cancel always', async () => {
    const id = await create(['sh', '-c', 'sleep 100'], {
      host: { restartPolicy: policy('always') },
      config: { stopSignal: 'SIGINT' },
    });
    await daemon.containerStart(id);
    await daemon.containerKill(id, 'HUP');
    await until('restarted', () => runtime.sandboxes.length === 2 && statusOf(daemon, id) === 'running');
    assert.equal(daemon.containerInspect(id).restartCount, 1);
    await daemon.containerStop(id, { timeout: 0 });
  });

  it('unless-stopped after docker kill: not restarted, and it stays down across a daemon restart', async () => {
    const id = await create(['sleep', '100'], { host: { restartPolicy: policy('unless-stopped') } });
    await daemon.containerStart(id);
    await daemon.containerKill(id, undefined);
    await daemon.containerWait(id, 'not-running').result;
    assert.equal(daemon.containerInspect(id).hasBeenManuallyStopped, true);
    await daemon.shutdown();
    const second = await newDaemon();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(statusOf(second, id), 'exited');
  });

  it('docker restart keeps an AutoRemove container and resets RestartCount; events kill, die, stop, start, restart', async () => {
    const id = await create(['sleep', '100'], { host: { autoRemove: true } });
    await daemon.containerStart(id);
    const events = recordEvents(daemon);
    await daemon.containerRestart(id, { timeout: 1 });
    assert.equal(statusOf(daemon, id), 'running');
    assert.deepEqual(
      events.map((e) => e.action),
      ['kill', 'die', 'stop', 'start', 'restart'],
    );
    assert.equal(events[0]?.actor.attributes.signal, '15');
    assert.equal(events[1]?.actor.attributes.exitCode, '143');
    await daemon.containerStop(id, {});
    await until('auto-removed', () => {
      try {
        daemon.containerInspect(id);
        return false;
      } catch {
        return true;
      }
    });
  });

  it('rm -f of a restarting container removes it and drops the restart', async () => {
    const id = await create(['sh', '-c', 'exit 2'], { host: { restartPolicy: policy('always') } });
    const waited = daemon.containerWait(id, 'removed');
    await daemon.containerStart(id);
    await until('restarting', () => statusOf(daemon, id) === 'restarting');
    await daemon.containerRemove(id, { force: true, removeVolumes: false });
    assert.equal((await waited.result).statusCode, 2);
    await new Promise((r) => setTimeout(r, 250));
    assert.equal(runtime.sandboxes.length, 1);
  });

  it('a restart that cannot start leaves the container exited with the exit code and the start error', async () => {
    const id = await create(['sh', '-c', 'exit 5'], { host: { restartPolicy: policy('always') } });
    const waited = daemon.containerWait(id, 'next-exit');
    await daemon.containerStart(id);
    await waited.result;
    // The VM cannot boot any more: the restart's start fails.
    runtime.start = async () => {
      throw new UnavailableError('VM boot failed: agent not ready');
    };
    const notRunning = daemon.containerWait(id, 'not-running');
    const result = await notRunning.result;
    assert.equal(result.statusCode, 5);
    const c = daemon.containerInspect(id);
    assert.equal(c.status, 'exited');
    assert.equal(c.state.exitCode, 5);
    assert.equal(c.state.error, 'VM boot failed: agent not ready');
    assert.equal(result.error, 'VM boot failed: agent not ready');
  });

  it('docker update --restart applies from the next exit', async () => {
    const id = await create(['sh', '-c', 'sleep 0.05; exit 1']);
    await daemon.containerStart(id);
    const result = await daemon.containerUpdate(id, {
      resources: {},
      restartPolicy: policy('on-failure', 1),
    });
    assert.deepEqual(result, { warnings: null });
    await until('restarted once and exited', () => {
      const c = daemon.containerInspect(id);
      return c.restartCount === 1 && c.status === 'exited';
    });
    assert.equal(runtime.sandboxes.length, 2);
  });
});

describe('restart backoff (manual clock)', () => {
  class ManualClock implements RestartClock {
    time = 0;
    readonly scheduled: number[] = [];
    private readonly timers = new Map<number, { at: number; fn: () => void }>();
    private nextId = 1;

    now(): number {
      return this.time;
    }

    setTimeout(fn: () => void, ms: number): unknown {
      const id = this.nextId++;
      this.scheduled.push(ms);
      this.timers.set(id, { at: this.time + ms, fn });
      return id;
    }

    clearTimeout(handle: unknown): void {
      this.timers.delete(handle as number);
    }

    advance(ms: number): void {
      this.time += ms;
      for (const [id, t] of [...this.timers]) {
        if (t.at <= this.time) {
          this.timers.delete(id);
          t.fn();
        }
      }
    }
  }

  it('waits 100, 200, 400 ms … between restarts and back to 100 ms after a run of 10 s', async () => {
    const dir = await fixture.tempDir('capsule-backoff-');
    const clock = new ManualClock();
    const log = createSilentLogger();
    const service = new ContainerService({
      store: new ContainerStore(path.join(dir, 'containers'), log),
      images,
      runtime,
      events: new EventsBus(),
      log,
      execRoot: path.join(dir, 'exec'),
      clock,
    });
    await service.init();
    try {
      // `cat` runs until its stdin closes: the test decides when each run ends.
      const { id } = await service.create({
        name: '',
        config: containerConfig({ cmd: ['sh', '-c', 'cat; exit 1'], openStdin: true }),
        hostConfig: hostConfig({ restartPolicy: policy('on-failure') }),
      });
      const runs = (): number => runtime.sandboxes.filter((x) => x.spec.containerId === id).length;
      /** Lets run number `n` exit after `ms` of (manual) time. */
      const endRun = async (n: number, ms = 0): Promise<void> => {
        await until(`run ${n}`, () => runs() === n && service.inspect(id).status === 'running');
        clock.advance(ms);
        const exited = service.wait(id, 'next-exit').result;
        await runtime.latest(id)?.closeStdin();
        await exited;
      };
      await service.start(id);
      await endRun(1);
      for (const expected of [[100], [100, 200], [100, 200, 400]]) {
        assert.deepEqual(clock.scheduled, expected);
        assert.equal(service.inspect(id).status, 'restarting');
        clock.advance(expected.at(-1) ?? 0);
        // The third restart's run lasts 10 s.
        await endRun(expected.length + 1, expected.length === 3 ? 10_000 : 0);
      }
      assert.deepEqual(clock.scheduled, [100, 200, 400, 100]);
      assert.equal(service.inspect(id).restartCount, 4);
      // A manual start starts the backoff afresh and resets the count.
      await service.stop(id);
      await service.start(id);
      assert.equal(service.inspect(id).restartCount, 0);
      clock.advance(1); // not 10 s: only a fresh backoff explains the 100 ms
      await endRun(5);
      assert.equal(clock.scheduled.at(-1), 100);
    } finally {
      await service.shutdown();
    }
  });
});

describe('restart policies across a daemon restart', () => {
  it('starts always (even stopped by hand), unless-stopped not stopped by hand, failed on-failure; RestartCount 0', async () => {
    const always = await create(['sleep', '100'], {
      host: { restartPolicy: policy('always') },
      name: 'always',
    });
    const alwaysStopped = await create(['sleep', '100'], {
      host: { restartPolicy: policy('always') },
      name: 'always-stopped',
    });
    const unless = await create(['sleep', '100'], {
      host: { restartPolicy: policy('unless-stopped') },
      name: 'unless',
    });
    const unlessStopped = await create(['sleep', '100'], {
      host: { restartPolicy: policy('unless-stopped') },
      name: 'unless-stopped',
    });
    const onFailure = await create(['sleep', '100'], {
      host: { restartPolicy: policy('on-failure') },
      name: 'on-failure',
    });
    const onFailureOk = await create(['true'], {
      host: { restartPolicy: policy('on-failure') },
      name: 'ok',
    });
    const no = await create(['sleep', '100'], { name: 'no' });
    const neverStarted = await create(['sleep', '100'], {
      host: { restartPolicy: policy('always') },
      name: 'created',
    });
    for (const id of [always, alwaysStopped, unless, unlessStopped, onFailure, onFailureOk, no]) {
      await daemon.containerStart(id);
    }
    await daemon.containerWait(onFailureOk, 'not-running').result;
    await daemon.containerStop(alwaysStopped, { timeout: 0 });
    await daemon.containerStop(unlessStopped, { timeout: 0 });
    // Restart counts are reset by the start on daemon start.
    await daemon.shutdown();
    assert.equal(daemon.containerInspect(always).status, 'exited');
    const before = runtime.sandboxes.length;

    const second = await newDaemon();
    const wanted = [always, alwaysStopped, unless, onFailure];
    await until('restored', () => wanted.every((id) => statusOf(second, id) === 'running'));
    assert.equal(runtime.sandboxes.length, before + wanted.length);
    for (const id of wanted) assert.equal(second.containerInspect(id).restartCount, 0);
    assert.equal(second.containerInspect(alwaysStopped).hasBeenManuallyStopped, false);
    assert.equal(statusOf(second, unlessStopped), 'exited');
    assert.equal(statusOf(second, onFailureOk), 'exited');
    assert.equal(statusOf(second, no), 'exited');
    assert.equal(statusOf(second, neverStarted), 'created');
  });

  it('after a crash (no shutdown) containers persisted running come back by their policy', async () => {
    const id = await create(['sleep', '100'], { host: { restartPolicy: policy('on-failure', 3) } });
    await daemon.containerStart(id);
    const second = await newDaemon(); // the first never shut down: its VM "died" with it
    await until('restored', () => statusOf(second, id) === 'running');
  });
});

describe('rename', () => {
  it('renames, frees the old name and publishes rename with oldName', async () => {
    const id = await create(['true'], { name: 'old', config: { labels: { a: 'b' } } });
    const events = recordEvents(daemon);
    await daemon.containerRename('old', 'new');
    assert.equal(daemon.containerInspect(id).name, '/new');
    assert.equal(daemon.containerInspect('new').id, id);
    assert.throws(() => daemon.containerInspect('old'), /No such container: old/);
    await create(['true'], { name: 'old' });
    assert.deepEqual(events[0]?.actor.attributes, { a: 'b', image: 'busybox', name: 'new', oldName: '/old' });
  });

  it('refuses with dockerd texts and statuses', async () => {
    await create(['true'], { name: 'one' });
    const two = await create(['true'], { name: 'two' });
    const failure = async (ref: string, name: string): Promise<string> => {
      try {
        await daemon.containerRename(ref, name);
        return 'ok';
      } catch (err) {
        return `${errorCodeOf(err)}: ${(err as Error).message}`;
      }
    };
    assert.equal(
      await failure('one', 'two'),
      `Conflict: Error when allocating new name: Conflict. The container name "/two" is already in use by container "${two}". You have to remove (or rename) that container to be able to reuse that name.`,
    );
    assert.equal(
      await failure('one', 'one'),
      'InvalidParameter: Renaming a container with the same name as its current name',
    );
    assert.equal(
      await failure('one', 'bad!'),
      'InvalidParameter: Error when allocating new name: Invalid container name (/bad!), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed',
    );
    assert.equal(await failure('one', ''), 'InvalidParameter: Neither old nor new names may be empty');
    assert.equal(await failure('nosuch', 'x2'), 'NotFound: No such container: nosuch');
    assert.equal(await failure('one', '/three'), 'ok');
  });

  it('the new name survives a daemon restart', async () => {
    const id = await create(['true'], { name: 'before' });
    await daemon.containerRename(id, 'after');
    const second = await newDaemon();
    assert.equal(second.containerInspect('after').id, id);
    assert.throws(() => second.containerInspect('before'));
  });
});

describe('update', () => {
  it('stores resources as dockerd does and publishes update', async () => {
    const id = await create(['true'], { host: { memory: 64 << 20 } });
    assert.equal(
      daemon.containerInspect(id).hostConfig.passthrough.MemorySwap,
      128 << 20,
      'MemorySwap = 2 × Memory',
    );
    const events = recordEvents(daemon);
    await daemon.containerUpdate(id, {
      resources: {
        memory: 100 << 20,
        memorySwap: 200 << 20,
        cpuShares: 512,
        nanoCpus: 5e8,
        pidsLimit: 50,
        cpusetCpus: '0',
      },
    });
    const h = daemon.containerInspect(id).hostConfig;
    assert.equal(h.memory, 100 << 20);
    assert.equal(h.nanoCpus, 5e8);
    assert.deepEqual(
      [h.passthrough.MemorySwap, h.passthrough.CpuShares, h.passthrough.PidsLimit, h.passthrough.CpusetCpus],
      [200 << 20, 512, 50, '0'],
    );
    assert.deepEqual(
      events.map((e) => e.action),
      ['update'],
    );
    // The next start limits the container to the updated memory, in a VM that much larger than it
    // (guest kernel and agent beside the container).
    await daemon.containerStart(id);
    assert.equal(runtime.latest(id)?.spec.options?.memoryLimitBytes, 100 << 20);
    assert.equal(runtime.latest(id)?.spec.resources.memoryMiB, 100 + 128);
  });

  it('refuses what dockerd refuses', async () => {
    const id = await create(['true'], { host: { nanoCpus: 1e9 } });
    const rm = await create(['true'], { host: { autoRemove: true } });
    const failure = async (
      ref: string,
      request: Parameters<Daemon['containerUpdate']>[1],
    ): Promise<string> => {
      try {
        await daemon.containerUpdate(ref, request);
        return 'ok';
      } catch (err) {
        return `${errorCodeOf(err)}: ${(err as Error).message}`;
      }
    };
    assert.equal(
      await failure(id, { resources: { memory: 100 << 20 } }),
      `Conflict: Cannot update container ${id}: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time`,
    );
    assert.equal(
      await failure(id, { resources: { cpuPeriod: 100000 } }),
      `Conflict: Cannot update container ${id}: Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set`,
    );
    assert.equal(
      await failure(rm, { resources: {}, restartPolicy: policy('always') }),
      `Conflict: Cannot update container ${rm}: Restart policy cannot be updated because AutoRemove is enabled for the container`,
    );
    assert.equal(await failure(rm, { resources: {}, restartPolicy: policy('no') }), 'ok');
    assert.equal(
      await failure('nosuch', { resources: {}, restartPolicy: policy('bogus') }),
      "InvalidParameter: invalid restart policy 'bogus'",
    );
    assert.equal(
      await failure(id, { resources: { memory: 4_000_000 } }),
      'InvalidParameter: Minimum memory limit allowed is 6MB',
    );
    assert.equal(await failure('nosuch', { resources: {} }), 'NotFound: No such container: nosuch');
    // An empty policy name leaves the policy alone.
    await daemon.containerUpdate(id, { resources: {}, restartPolicy: policy('always') });
    await daemon.containerUpdate(id, { resources: {}, restartPolicy: policy('', 4) });
    assert.deepEqual(daemon.containerInspect(id).hostConfig.restartPolicy, policy('always'));
  });
});

describe('container prune', () => {
  it('removes stopped containers matching label/label!/until, reports them, publishes prune', async () => {
    const running = await create(['sleep', '100']);
    await daemon.containerStart(running);
    const keep = await create(['true'], { config: { labels: { keep: 'yes' } } });
    const plain = await create(['true']);
    const events = recordEvents(daemon);
    assert.deepEqual(await daemon.containerPrune({ label: ['keep=no'] }), {
      containersDeleted: null,
      spaceReclaimed: 0,
    });
    assert.deepEqual(await daemon.containerPrune({ until: ['1h'] }), {
      containersDeleted: null,
      spaceReclaimed: 0,
    });
    const r = await daemon.containerPrune({ 'label!': ['keep'] });
    assert.deepEqual(r.containersDeleted, [plain]);
    const all = await daemon.containerPrune({});
    assert.deepEqual(all.containersDeleted, [keep]);
    assert.equal(daemon.containerInspect(running).status, 'running');
    const prunes = events.filter((e) => e.action === 'prune');
    assert.equal(prunes.length, 4);
    assert.deepEqual(prunes[0]?.actor, { id: '', attributes: { reclaimed: '0' } });
  });

  it('rejects bad filters as dockerd', async () => {
    const failure = async (filters: Record<string, string[]>): Promise<string> => {
      try {
        await daemon.containerPrune(filters);
        return 'ok';
      } catch (err) {
        return `${errorCodeOf(err)}: ${(err as Error).message}`;
      }
    };
    assert.equal(await failure({ status: ['exited'] }), "InvalidParameter: Invalid filter 'status'");
    assert.equal(
      await failure({ until: ['bogus'] }),
      'System: failed to parse value as time or duration: "bogus"',
    );
    assert.equal(await failure({ until: ['1h', '2h'] }), 'System: more than one until filter specified');
  });
});

describe('events of the lifecycle', () => {
  it('attributes: the action’s own, labels, image and name (image and name win over labels)', async () => {
    const events = recordEvents(daemon);
    const id = await create(['sh', '-c', 'exit 7'], {
      config: { labels: { name: 'label-name', x: 'y' } },
      name: 'evt',
    });
    await daemon.containerStart(id);
    await daemon.containerWait(id, 'not-running').result;
    const die = events.find((e) => e.action === 'die');
    assert.deepEqual(die?.actor.attributes, { exitCode: '7', name: 'evt', x: 'y', image: 'busybox' });
  });

  it('resize publishes height and width; resizing a stopped container is 409', async () => {
    const id = await create(['sleep', '100']);
    await assert.rejects(daemon.containerResize(id, 10, 20), (err) => errorCodeOf(err) === 'Conflict');
    await daemon.containerStart(id);
    const events = recordEvents(daemon);
    await daemon.containerResize(id, 10, 20);
    assert.equal(events[0]?.action, 'resize');
    assert.equal(events[0]?.actor.attributes.height, '10');
    assert.equal(events[0]?.actor.attributes.width, '20');
  });
});
