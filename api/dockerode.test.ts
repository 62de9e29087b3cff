/** dockerode (unversioned paths, list-form filters, hijack and plain attach) against the API. */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import Docker from 'dockerode';
import { BUSYBOX, startHarness, type Harness } from './testing/harness';

let h: Harness;
let docker: Docker;

before(async () => {
  h = await startHarness({ images: [BUSYBOX], registry: [{ ref: 'alpine:3.19' }] });
  docker = new Docker({ socketPath: h.socketPath });
});
after(async () => {
  await h.close();
});

function collect(stream: NodeJS.ReadableStream): { out: () => string; err: () => string; demux: () => void } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  stderr.on('data', (d: Buffer) => (err += d.toString()));
  return {
    out: () => out,
    err: () => err,
    demux: () => docker.modem.demuxStream(stream, stdout, stderr),
  };
}

describe('dockerode', () => {
  it('ping, version, info', async () => {
    assert.equal(String(await docker.ping()), 'OK');
    const version = await docker.version();
    assert.equal(version.ApiVersion, '1.43');
    const info = await docker.info();
    assert.equal(info.OSType, 'linux');
    assert.ok(info.Runtimes && 'capsule-vm' in info.Runtimes);
  });

  it('create, hijacked attach, start, wait, logs, inspect, remove', async () => {
    const container = await docker.createContainer({
      Image: 'busybox',
      Cmd: ['sh', '-c', 'echo hi-out; echo hi-err >&2; exit 5'],
      Labels: { 'org.test': 'yes' },
      AttachStdout: true,
      AttachStderr: true,
    });
    const stream = await container.attach({ stream: true, stdout: true, stderr: true, hijack: true });
    const io = collect(stream);
    io.demux();
    const ended = new Promise((resolve) => stream.on('end', resolve));
    await container.start();
    const result = (await container.wait()) as { StatusCode: number };
    await ended;
    assert.equal(result.StatusCode, 5);
    assert.equal(io.out(), 'hi-out\n');
    assert.equal(io.err(), 'hi-err\n');

    const logs = (await container.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    assert.ok(Buffer.isBuffer(logs));
    assert.ok(logs.includes('hi-out\n'));
    const inspect = await container.inspect();
    assert.equal(inspect.State.ExitCode, 5);
    assert.equal(inspect.State.Status, 'exited');
    assert.deepEqual(inspect.Config.Labels, { 'org.test': 'yes' });

    const listed = await docker.listContainers({ all: true, filters: { label: ['org.test=yes'] } });
    assert.deepEqual(
      listed.map((c) => c.Id),
      [container.id],
    );
    assert.match(listed[0]?.Status ?? '', /^Exited \(5\) (Less than a second|\d+ seconds?) ago$/);
    const mapForm = await docker.listContainers({
      all: true,
      filters: JSON.stringify({ label: { 'org.test=yes': true } }),
    });
    assert.equal(mapForm.length, 1);
    const none = await docker.listContainers({ filters: { label: ['org.test=yes'] } });
    assert.equal(none.length, 0, 'exited containers are listed only with all');

    await assert.rejects(container.stop(), (err: { statusCode?: number }) => err.statusCode === 304);
    await container.remove({ v: true });
    await assert.rejects(container.inspect(), (err: { statusCode?: number; message: string }) => {
      return err.statusCode === 404 && err.message.includes(`No such container: ${container.id}`);
    });
  });

  it('plain (non-hijacked) attach streams until the container exits', async () => {
    const container = await docker.createContainer({
      Image: 'busybox',
      Cmd: ['sh', '-c', 'echo plain-1; echo plain-2'],
    });
    const stream = await container.attach({ stream: true, stdout: true, stderr: true });
    const io = collect(stream);
    io.demux();
    const ended = new Promise((resolve) => stream.on('end', resolve));
    await container.start();
    await ended;
    assert.equal(io.out(), 'plain-1\nplain-2\n');
  });

  it('stdin through a hijacked attach', async () => {
    const container = await docker.createContainer({
      Image: 'busybox',
      Cmd: ['cat'],
      OpenStdin: true,
      StdinOnce: true,
      AttachStdin: true,
      AttachStdout: true,
    });
    const stream = await container.attach({ stream: true, stdin: true, stdout: true, hijack: true });
    const io = collect(stream);
    io.demux();
    const ended = new Promise((resolve) => stream.on('end', resolve));
    stream.write('typed in\n');
    stream.end();
    await container.start();
    await ended;
    assert.equal(io.out(), 'typed in\n');
  });

  it('pull streams progress; images list and inspect', async () => {
    const stream = await docker.pull('alpine:3.19');
    const events = await new Promise<Array<{ status?: string }>>((resolve, reject) =>
      docker.modem.followProgress(stream, (err: Error | null, out: Array<{ status?: string }>) =>
        err ? reject(err) : resolve(out),
      ),
    );
    assert.ok(events.some((e) => e.status === 'Status: Downloaded newer image for alpine:3.19'));
    const images = await docker.listImages();
    assert.ok(images.some((i) => i.RepoTags?.includes('alpine:3.19')));
    const inspect = await docker.getImage('alpine:3.19').inspect();
    assert.match(inspect.Id, /^sha256:/);
    assert.ok('ContainerConfig' in inspect);
    await assert.rejects(
      docker.getImage('nosuch').inspect(),
      (err: { statusCode?: number; message: string }) => {
        return err.statusCode === 404 && /no such image/i.test(err.message);
      },
    );
  });

  it('a failed pull before any progress is a JSON error', async () => {
    await assert.rejects(docker.pull('nosuch:1'), (err: { statusCode?: number; message: string }) => {
      return err.statusCode === 404 && err.message.includes('manifest for nosuch:1 not found');
    });
  });
});
