/**
 * A minimal events bus (dockerd's events service): publishers record container and image events;
 * `GET /events` subscribers get the recent past (for `since`) and then live events, filtered.
 */
import { EventEmitter } from 'node:events';
import { InvalidParameterError } from '../common/errdefs';
import { nowNs } from './time';
import type { DaemonEvent, EventActor, FilterArgs } from './types';

const HISTORY = 1024;
const FILTER_KEYS = new Set([
  'type',
  'container',
  'event',
  'label',
  'image',
  'network',
  'volume',
  'daemon',
  'scope',
]);

export class EventsBus {
  private readonly history: DaemonEvent[] = [];
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  get listeners(): number {
    return this.emitter.listenerCount('event');
  }

  publish(type: DaemonEvent['type'], action: string, actor: EventActor): DaemonEvent {
    const event: DaemonEvent = { type, action, actor, scope: 'local', timeNs: nowNs() };
    this.history.push(event);
    if (this.history.length > HISTORY) this.history.shift();
    this.emitter.emit('event', event);
    return event;
  }

  /** Past events (since ≤ time ≤ until) then live ones; `onEvent` stops being called after the returned close. */
  subscribe(
    sinceNs: bigint | undefined,
    onEvent: (e: DaemonEvent) => void,
  ): { past: DaemonEvent[]; close(): void } {
    const past = sinceNs === undefined ? [] : this.history.filter((e) => e.timeNs >= sinceNs);
    this.emitter.on('event', onEvent);
    return { past, close: () => this.emitter.off('event', onEvent) };
  }
}

export function validateEventFilters(filters: FilterArgs): void {
  for (const key of Object.keys(filters)) {
    if (!FILTER_KEYS.has(key)) throw new InvalidParameterError(`Invalid filter '${key}'`);
  }
}

function matchesLabel(attributes: Record<string, string>, wanted: string): boolean {
  const eq = wanted.indexOf('=');
  if (eq < 0) return wanted in attributes;
  return attributes[wanted.slice(0, eq)] === wanted.slice(eq + 1);
}

/** dockerd's event filter: OR within a key, AND across keys. */
export function eventMatches(event: DaemonEvent, filters: FilterArgs): boolean {
  const attrs = event.actor.attributes;
  const any = (key: string, test: (v: string) => boolean): boolean => {
    const values = filters[key];
    return !values || values.length === 0 || values.some(test);
  };
  return (
    any('type', (v) => v === event.type) &&
    any('event', (v) => v === event.action || event.action.startsWith(`${v}:`)) &&
    any('scope', (v) => v === event.scope) &&
    any(
      'container',
      (v) => event.type === 'container' && (event.actor.id.startsWith(v) || attrs.name === v),
    ) &&
    any(
      'image',
      (v) => attrs.image === v || event.actor.id === v || (event.type === 'image' && attrs.name === v),
    ) &&
    any('label', (v) => matchesLabel(attrs, v)) &&
    any('network', (v) => event.type === 'network' && (event.actor.id.startsWith(v) || attrs.name === v)) &&
    any('volume', (v) => event.type === 'volume' && event.actor.id === v) &&
    any('daemon', (v) => event.type === 'daemon' && event.actor.id === v)
  );
}
