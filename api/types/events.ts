/** Docker's event message, with the legacy status/id/from fields docker-compose 1.29 still reads. */
import type { DaemonEvent } from '../../daemon/types';

export interface EventMessage {
  status?: string;
  id?: string;
  from?: string;
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes: Record<string, string> };
  scope: string;
  time: number;
  timeNano: number;
}

/** Go marshals maps with sorted keys. */
function sortedAttributes(attributes: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(attributes).sort()) out[key] = attributes[key] ?? '';
  return out;
}

/** dockerd's events.Message: legacy fields omitted when empty (Go's omitempty). */
export function toEventMessage(e: DaemonEvent): EventMessage {
  const message: EventMessage = {
    Type: e.type,
    Action: e.action,
    Actor: { ID: e.actor.id, Attributes: sortedAttributes(e.actor.attributes) },
    scope: e.scope,
    time: Number(e.timeNs / 1_000_000_000n),
    timeNano: Number(e.timeNs),
  };
  if (e.type === 'container' || e.type === 'image') {
    const legacy: Partial<EventMessage> = { status: e.action };
    if (e.actor.id !== '') legacy.id = e.actor.id;
    if (e.type === 'container' && e.actor.attributes.image) legacy.from = e.actor.attributes.image;
    return { ...legacy, ...message };
  }
  return message;
}

/**
 * One line of the events stream. `timeNano` is written from the bigint: nanoseconds since the
 * epoch exceed a double's 53 bits, and Go clients read the exact int64.
 */
export function encodeEventMessage(e: DaemonEvent): string {
  const { timeNano: _lossy, ...rest } = toEventMessage(e);
  const json = JSON.stringify(rest);
  return `${json.slice(0, -1)},"timeNano":${e.timeNs.toString()}}\n`;
}
