import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createSilentLogger } from '../common/logger';
import { DaemonImages } from './daemon-images';
import type { EventsBus } from './events';
import { containersPerImage, imageInUse } from './image-usage';
import { FakeImageService } from './testing/fakes';
import type { ContainerRecord, DaemonEvent } from './types';

function record(id: string, imageId: string, running: boolean): ContainerRecord {
  return { id, imageId, state: { running } } as unknown as ContainerRecord;
}

describe('image usage from the container store', () => {
  it('names a running user first, else a stopped one, else none', () => {
    const containers = [
      record('c1', 'sha256:a', false),
      record('c2', 'sha256:a', true),
      record('c3', 'sha256:b', false),
    ];
    const inUse = imageInUse(() => containers);
    assert.deepEqual(inUse('sha256:a'), { id: 'c2', running: true });
    assert.deepEqual(inUse('sha256:b'), { id: 'c3', running: false });
    assert.equal(inUse('sha256:c'), undefined);
    const count = containersPerImage(() => containers);
    assert.equal(count('sha256:a'), 2);
    assert.equal(count('sha256:c'), 0);
  });
});

describe('image events', () => {
  it('pull: Actor.ID is the familiar reference with its tag, name the repository', async () => {
    const images = new FakeImageService({
      registry: [{ ref: 'busybox:latest' }, { ref: '127.0.0.1:5000/x/y:2' }],
    });
    const seen: Array<Pick<DaemonEvent, 'type' | 'action' | 'actor'>> = [];
    // Only the publish side matters here.
    const events = {
      publish: (type: DaemonEvent['type'], action: string, actor: DaemonEvent['actor']) => {
        seen.push({ type, action, actor });
      },
    } as unknown as EventsBus;
    const ops = new DaemonImages({
      images,
      events,
      containers: () => [],
      log: createSilentLogger(),
      login: () => Promise.reject(new Error('unused')),
    });
    await ops.pull('docker.io/library/busybox', {}, () => undefined);
    await ops.pull('127.0.0.1:5000/x/y:2', {}, () => undefined);
    await ops.pull('busybox', { allTags: true }, () => undefined); // docker pull -a: the repository alone
    assert.deepEqual(
      seen.map((e) => [e.type, e.action, e.actor.id, e.actor.attributes.name]),
      [
        ['image', 'pull', 'busybox:latest', 'busybox'],
        ['image', 'pull', '127.0.0.1:5000/x/y:2', '127.0.0.1:5000/x/y'],
        ['image', 'pull', 'busybox', 'busybox'],
      ],
    );
  });
});
