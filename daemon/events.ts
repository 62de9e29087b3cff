/**
 * The events service (dockerd's daemon/events): publishers record events; `GET /events`
 * subscribers get the buffered past (the last 256 events, when `since` or `until` is given) and
 * then live events, both through dockerd's filter rules.
 */
import { EventEmitter } from 'node:events';
import { familiarName, parseNormalizedNamed } from '../images/reference';
import { matchKVList } from './filters';
import { nowNs } from './time';
import type { DaemonEvent, EventActor, EventsOptions, FilterArgs } from './types';

/** dockerd keeps this many events for `since` replays. */
export const EVENTS_HISTORY = 256;

export interface EventSubscription {
  past: DaemonEvent[];
  close(): void;
}

export class EventsBus {
  private readonly history: DaemonEvent[] = [];
  private readonly emitter = new EventEmitter();

  constructor(private readonly clock: () => bigint = nowNs) {
    this.emitter.setMaxListeners(0);
  }

  get listeners(): number {
    return this.emitter.listenerCount('event');
  }

  publish(type: DaemonEvent['type'], action: string, actor: EventActor): DaemonEvent {
    const event: DaemonEvent = { type, action, actor, scope: 'local', timeNs: this.clock() };
    this.history.push(event);
    if (this.history.length > EVENTS_HISTORY) this.history.shift();
    this.emitter.emit('event', event);
    return event;
  }

  /**
   * dockerd's SubscribeTopic: the buffered events between since and until that match (only when
   * either is given; a zero bound is no bound, as in dockerd), then every live event that matches,
   * until `close`.
   */
  subscribe(options: EventsOptions, onEvent: (e: DaemonEvent) => void): EventSubscription {
    const { sinceNs, untilNs, filters } = options;
    const past: DaemonEvent[] = [];
    if (sinceNs !== undefined || untilNs !== undefined) {
      for (const e of this.history) {
        if (sinceNs !== undefined && e.timeNs < sinceNs) continue;
        if (untilNs !== undefined && untilNs > 0n && e.timeNs > untilNs) continue;
        if (eventMatches(e, filters)) past.push(e);
      }
    }
    const listener = (e: DaemonEvent): void => {
      if (eventMatches(e, filters)) onEvent(e);
    };
    this.emitter.on('event', listener);
    return { past, close: () => this.emitter.off('event', listener) };
  }
}

/** filters.Args.ExactMatch: true when the key is absent. */
function exact(filters: FilterArgs, key: string, value: string): boolean {
  const values = filters[key];
  return !values || values.length === 0 || values.includes(value);
}

/** filters.Args.FuzzyMatch: exact, or a filter value that prefixes `value`. */
function fuzzy(filters: FilterArgs, key: string, value: string): boolean {
  const values = filters[key];
  return !values || values.length === 0 || values.some((v) => value.startsWith(v));
}

/** The actor's id or its name attribute, by prefix (dockerd's fuzzyMatchName). */
function fuzzyName(filters: FilterArgs, key: string, e: DaemonEvent): boolean {
  return fuzzy(filters, key, e.actor.id) || fuzzy(filters, key, e.actor.attributes.name ?? '');
}

/** The repository without tag or digest, familiar ("busybox"); the input when it is no reference. */
function stripTag(image: string): string {
  try {
    return familiarName(parseNormalizedNamed(image));
  } catch {
    return image;
  }
}

const FUZZY_EVENTS = new Set(['health_status', 'exec_create', 'exec_start']);

/**
 * dockerd's events filter (daemon/events/filter.go): keys are ANDed, values of a key ORed (labels
 * ANDed). `container`, `network`, `volume`, `daemon` … match the actor's id or name by prefix,
 * whatever the event's type; `image` matches the image's id or name with or without its tag.
 * Unknown keys are ignored, as dockerd 20.10 does.
 */
export function eventMatches(event: DaemonEvent, filters: FilterArgs): boolean {
  const attrs = event.actor.attributes;
  const eventValues = filters.event ?? [];
  const actionOk = eventValues.some((v) => FUZZY_EVENTS.has(v))
    ? fuzzy(filters, 'event', event.action)
    : exact(filters, 'event', event.action);
  const imageName = (event.type === 'image' ? attrs.name : attrs.image) ?? '';
  const imageOk =
    exact(filters, 'image', event.actor.id) ||
    exact(filters, 'image', imageName) ||
    exact(filters, 'image', stripTag(event.actor.id)) ||
    exact(filters, 'image', stripTag(imageName));
  return (
    actionOk &&
    exact(filters, 'type', event.type) &&
    exact(filters, 'scope', event.scope) &&
    ['daemon', 'container', 'plugin', 'volume', 'network', 'node', 'service', 'secret', 'config'].every(
      (key) => fuzzyName(filters, key, event),
    ) &&
    imageOk &&
    matchKVList(filters, 'label', attrs)
  );
}
