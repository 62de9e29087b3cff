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

export function toEventMessage(e: DaemonEvent): EventMessage {
  const message: EventMessage = {
    Type: e.type,
    Action: e.action,
    Actor: { ID: e.actor.id, Attributes: e.actor.attributes },
    scope: e.scope,
    time: Number(e.timeNs / 1_000_000_000n),
    timeNano: Number(e.timeNs),
  };
  if (e.type === 'container' || e.type === 'image') {
    const legacy: Partial<EventMessage> = { status: e.action, id: e.actor.id };
    if (e.type === 'container' && e.actor.attributes.image !== undefined)
      legacy.from = e.actor.attributes.image;
    return { ...legacy, ...message };
  }
  return message;
}
