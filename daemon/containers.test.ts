import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, it } from 'node:test';
import { NotFoundError } from '../common/errdefs';
import type { DaemonConfig } from './config';
import type { Daemon } from './daemon';
import type { FakeImageService, FakeSandboxRuntime } from './testing/fakes';
import { recordEvents, useDaemonFixture } from './testing/fixture';
import type { AttachSink, OutputChunk } from './types';

const fixture = useDaemonFixture('capsule-daemon-');
const { create } = fixture;
let config: DaemonConfig;
let images: FakeImageService;
let runtime: FakeSandboxRuntime;
let daemon: Daemon;
// A fresh daemon for every test (the fixture's hook runs first): name the current one's parts.
beforeEach(() => ({ config, images, runtime, daemon } = fixture));

describe('container lifecycle', () => {
  it('records the exit before closing attach streams and waking waiters', async () => {
    const id = await create(['sh', '-c', 'echo hi; exit 4']);
    const observed: string[] = [];
    const session = daemon.containerAttach(id, {
      stdin: false,
      stdout: true,
      stderr: true,
      stream: true,
      logs: false,
    });
    const chunks: OutputChunk[] = [];
    const sink: AttachSink = {
      write: (c) => {
        chunks.push(c);
        return true;
      },
      drained: async () => undefined,
      close: () => {
        const s = daemon.containerInspect(id).state;
        observed.push(`close:${s.running}:${s.exitCode}`);
      },
    };
    session.start(sink);
    const waiter = daemon.containerWait(id, 'next-exit');
    void waiter.result.then((r) => {
      const s = daemon.containerInspect(id).state;
      observed.push(`wait:${r.statusCode}:${s.running}:${s.pid}`);
    });
    await daemon.containerStart(id);
    assert.equal((await waiter.result).statusCode, 4);
    assert.deepEqual(observed, ['close:false:4', 'wait:4:false:0']);
    assert.equal(Buffer.concat(chunks.map((c) => c.data)).toString(), 'hi\n');
    const state = daemon.containerInspect(id);
    assert.equal(state.status, 'exited');
    assert.notEqual(state.state.finishedAt, '0001-01-01T00:00:00Z');
  });

  it('writes the log even when nobody is attached', async () => {
    const id = await create(['sh', '-c', 'echo unattended; echo e >&2']);
    await daemon.containerStart(id);
    await daemon.containerWait(id, 'next-exit').result.catch(() => undefined);
    await daemon.containerWait(id, 'not-running').result;
    const { entries } = await daemon.containerLogs(id, { stdout: true, stderr: true, follow: false });
    const got: string[] = [];
    for await (const e of entries) got.push(`${e.stream}:${e.data.toString()}`);
    assert.deepEqual(got, ['1:unattended\n', '2:e\n']);
  });

  it('AutoRemove removes after exit, then wakes `removed`; events in dockerd order', async () => {
    const events = recordEvents(daemon);
    const id = await create(['sh', '-c', 'exit 3'], { host: { autoRemove: true } });
    const removed = daemon.containerWait(id, 'removed');
    await daemon.containerStart(id);
    const result = await removed.result;
    assert.deepEqual(result, { statusCode: 3, error: null });
    assert.throws(() => daemon.containerInspect(id), NotFoundError);
    assert.equal(existsSync(path.join(config.dataRoot, 'containers', id)), false);
    assert.deepEqual(
      events.map((e) => e.action),
      ['create', 'start', 'die', 'destroy'],
    );
    assert.equal(events[2]?.actor.attributes.exitCode, '3');
  });

  it('a failed start records Error and the exit code (127) and stays created', async () => {
    const id = await create(['nosuch']);
    await assert.rejects(daemon.containerStart(id), /executable file not found/);
    const c = daemon.containerInspect(id);
    assert.equal(c.status, 'created');
    assert.equal(c.state.exitCode, 127);
    assert.match(c.state.error, /executable file not found/);
    const waited = await daemon.containerWait(id, 'not-running').result;
    assert.equal(waited.statusCode, 127);
    assert.match(waited.error ?? '', /executable file not found/);
  });

  it('stop sends SIGTERM, escalates to SIGKILL after the timeout', async () => {
    const polite = await create(['sleep', '100']);
    await daemon.containerStart(polite);
    await daemon.containerStop(polite, {});
    assert.equal(daemon.containerInspect(polite).state.exitCode, 143);

    const stubborn = await create(['sh', '-c', "trap '' TERM; sleep 100"]);
    await daemon.containerStart(stubborn);
    await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    await daemon.containerStop(stubborn, { timeout: 0.2 });
    assert.ok(Date.now() - t0 >= 150);
    assert.equal(daemon.containerInspect(stubborn).state.exitCode, 137);
    assert.deepEqual(runtime.latest(stubborn)?.signals, [15, 9]);
  });

  it('StopSignal from the config and ?signal= are honoured', async () => {
    const id = await create(['sleep', '100'], { config: { stopSignal: 'SIGINT' } });
    await daemon.containerStart(id);
    await daemon.containerStop(id, {});
    assert.equal(daemon.containerInspect(id).state.exitCode, 130);
    await daemon.containerStart(id);
    await daemon.containerStop(id, { signal: 'USR1' });
    assert.equal(daemon.containerInspect(id).state.exitCode, 138);
  });

  it('kill takes names and numbers; rm -f destroys a running sandbox and everything on disk', async () => {
    const id = await create(['sleep', '100'], { name: 'victim' });
    await daemon.containerStart(id);
    await daemon.containerKill('victim', 'SIGHUP');
    await daemon.containerWait(id, 'not-running').result;
    assert.equal(daemon.containerInspect(id).state.exitCode, 129);
    await daemon.containerStart(id);
    await daemon.containerRemove('victim', { force: true, removeVolumes: false });
    assert.throws(() => daemon.containerInspect('victim'), NotFoundError);
    assert.equal(existsSync(path.join(config.dataRoot, 'containers', id)), false);
    // The name is free again.
    await create(['true'], { name: 'victim' });
  });

  it('passes the merged process spec to the runtime', async () => {
    const id = await create(['env'], {
      config: {
        env: ['A=1'],
        workingDir: '/w',
        user: 'nobody',
        tty: true,
        hostname: '',
      },
    });
    await daemon.containerStart(id);
    const spec = runtime.latest(id)?.spec;
    assert.ok(spec);
    assert.deepEqual(spec.process.args, ['env']);
    assert.deepEqual(spec.process.env, ['PATH=/bin', `HOSTNAME=${id.slice(0, 12)}`, 'TERM=xterm', 'A=1']);
    assert.equal(spec.process.cwd, '/w');
    assert.equal(spec.process.user, 'nobody');
    assert.equal(spec.hostname, id.slice(0, 12));
    assert.equal(spec.containerLayerDir, path.join(config.dataRoot, 'containers', id, 'layer'));
  });

  it('on daemon start, containers persisted as running are marked exited', async () => {
    const keep = await create(['sleep', '100'], { name: 'survivor' });
    const gone = await create(['sleep', '100'], { host: { autoRemove: true } });
    await daemon.containerStart(keep);
    await daemon.containerStart(gone);
    // A second daemon on the same data root, as after a crash (the first never shut down).
    const restarted = await fixture.newDaemon();
    const c = restarted.containerInspect('survivor');
    assert.equal(c.status, 'exited');
    assert.equal(c.state.pid, 0);
    assert.equal(c.state.exitCode, 255);
    assert.throws(() => restarted.containerInspect(gone), NotFoundError);
    await restarted.shutdown();
  });
});

describe('listing', () => {
  it('filters as dockerd: status, exited, label, name, ancestor, limit; bad filters are 400', async () => {
    const a = await create(['sh', '-c', 'exit 2'], { config: { labels: { team: 'a' } }, name: 'alpha' });
    const b = await create(['sleep', '100'], { config: { labels: { team: 'b' } }, name: 'beta' });
    await create(['true'], { name: 'gamma' });
    await daemon.containerStart(a);
    await daemon.containerWait(a, 'not-running').result;
    await new Promise((r) => setTimeout(r, 5));
    await daemon.containerStart(b);
    const names = async (filters: Record<string, string[]>, all = true, limit = -1): Promise<string[]> =>
      (await daemon.containerList({ all, limit, size: false, filters })).map((c) => c.name);
    assert.deepEqual(await names({}, false), ['/beta']);
    assert.deepEqual(await names({}), ['/gamma', '/beta', '/alpha']);
    assert.deepEqual(await names({ status: ['exited'] }, false), ['/alpha']);
    assert.deepEqual(await names({ status: ['created', 'running'] }), ['/gamma', '/beta']);
    assert.deepEqual(await names({ exited: ['2'] }), ['/alpha']);
    assert.deepEqual(await names({ label: ['team'] }), ['/beta', '/alpha']);
    assert.deepEqual(await names({ label: ['team=a'] }), ['/alpha']);
    assert.deepEqual(await names({ name: ['^/al'] }), ['/alpha']);
    assert.deepEqual(await names({ ancestor: ['busybox'] }), ['/gamma', '/beta', '/alpha']);
    assert.deepEqual(await names({ ancestor: ['other'] }), []);
    assert.deepEqual(await names({ before: ['gamma'] }), ['/beta', '/alpha']);
    assert.deepEqual(await names({ since: ['alpha'] }), ['/gamma', '/beta']);
    assert.deepEqual(await names({}, true, 1), ['/gamma']);
    await assert.rejects(names({ status: ['bogus'] }), /Invalid filter 'status=bogus'/);
    await assert.rejects(names({ foo: ['x'] }), /Invalid filter 'foo'/);
  });

  it('shows the image id once the tag the container was created from moved', async () => {
    const id = await create(['true']);
    let list = await daemon.containerList({ all: true, limit: -1, size: false, filters: {} });
    assert.equal(list[0]?.imageName, 'busybox');
    images.retag('busybox:latest', { Cmd: ['sh'] });
    list = await daemon.containerList({ all: true, limit: -1, size: false, filters: {} });
    assert.equal(list[0]?.imageName, daemon.containerInspect(id).imageId);
  });
});
