import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EVENTS_HISTORY, EventsBus, eventMatches } from './events';
import type { DaemonEvent, FilterArgs } from './types';

function containerEvent(action: string, name: string, attrs: Record<string, string> = {}): DaemonEvent {
  return {
    type: 'container',
    action,
    actor: { id: `${name}-id`.padEnd(64, '0'), attributes: { image: 'busybox:ref', name, ...attrs } },
    scope: 'local',
    timeNs: 1n,
  };
}

describe('events filters (dockerd 20.10)', () => {
  const web = containerEvent('create', 'web', { a: '1', b: '2' });
  const web2 = containerEvent('create', 'web2', { a: '1' });
  const other = containerEvent('die', 'other', { exitCode: '1' });
  const image: DaemonEvent = {
    type: 'image',
    action: 'pull',
    actor: {
      id: 'docker.io/library/busybox:latest',
      attributes: { name: 'docker.io/library/busybox:latest' },
    },
    scope: 'local',
    timeNs: 1n,
  };
  const pick = (filters: FilterArgs): string[] =>
    [web, web2, other, image]
      .filter((e) => eventMatches(e, filters))
      .map((e) => e.actor.attributes.name ?? '');

  it('container= matches the id or the name by prefix', () => {
    assert.deepEqual(pick({ container: ['web'] }), ['web', 'web2']);
    assert.deepEqual(pick({ container: ['we'] }), ['web', 'web2']);
    assert.deepEqual(pick({ container: ['eb'] }), []);
    assert.deepEqual(pick({ container: ['other-id'] }), ['other']);
  });

  it('label= values must all match (key or key=value)', () => {
    assert.deepEqual(pick({ label: ['a=1', 'b=2'] }), ['web']);
    assert.deepEqual(pick({ label: ['a'] }), ['web', 'web2']);
    assert.deepEqual(pick({ label: ['a=2'] }), []);
  });

  it('image= matches the name with or without its tag, and image events by their name', () => {
    assert.deepEqual(pick({ image: ['busybox'] }), [
      'web',
      'web2',
      'other',
      image.actor.attributes.name ?? '',
    ]);
    assert.deepEqual(pick({ image: ['busybox:ref'] }), ['web', 'web2', 'other']);
    assert.deepEqual(pick({ image: ['busybox:latest'] }), []);
  });

  it('type= and event= match exactly, keys AND, values OR; unknown keys are ignored', () => {
    assert.deepEqual(pick({ type: ['container'], event: ['create'] }), ['web', 'web2']);
    assert.deepEqual(pick({ event: ['create', 'die'] }), ['web', 'web2', 'other']);
    assert.deepEqual(pick({ event: ['cre'] }), []);
    assert.deepEqual(pick({ type: ['image'] }), [image.actor.attributes.name ?? '']);
    assert.deepEqual(pick({ foo: ['x'] }).length, 4);
    assert.deepEqual(pick({ scope: ['swarm'] }), []);
  });

  it('health_status, exec_create, exec_start match by prefix', () => {
    const health = containerEvent('health_status: healthy', 'h');
    assert.equal(eventMatches(health, { event: ['health_status'] }), true);
    assert.equal(eventMatches(health, { event: ['health'] }), false);
  });
});

describe('events buffer', () => {
  it(`keeps the last ${EVENTS_HISTORY} events for since/until replays`, () => {
    let t = 0n;
    const bus = new EventsBus(() => ++t * 1_000_000_000n);
    for (let i = 0; i < 300; i++) bus.publish('container', 'create', { id: `c${i}`, attributes: {} });
    const all = bus.subscribe({ sinceNs: 0n, filters: {} }, () => undefined);
    all.close();
    assert.equal(all.past.length, EVENTS_HISTORY);
    assert.equal(all.past[0]?.actor.id, 'c44');
    const window = bus.subscribe(
      { sinceNs: 290_000_000_000n, untilNs: 292_000_000_000n, filters: {} },
      () => undefined,
    );
    window.close();
    assert.deepEqual(
      window.past.map((e) => e.actor.id),
      ['c289', 'c290', 'c291'],
    );
    // No since/until: no replay. until=0 is no bound (dockerd's UnixNano() == 0 quirk).
    assert.equal(bus.subscribe({ filters: {} }, () => undefined).past.length, 0);
    assert.equal(bus.subscribe({ untilNs: 0n, filters: {} }, () => undefined).past.length, EVENTS_HISTORY);
  });

  it('delivers live events through the filters until closed', () => {
    const bus = new EventsBus();
    const seen: string[] = [];
    const sub = bus.subscribe({ filters: { event: ['start'] } }, (e) => seen.push(e.action));
    bus.publish('container', 'create', { id: 'x', attributes: {} });
    bus.publish('container', 'start', { id: 'x', attributes: {} });
    sub.close();
    bus.publish('container', 'start', { id: 'x', attributes: {} });
    assert.deepEqual(seen, ['start']);
    assert.equal(bus.listeners, 0);
  });
});
