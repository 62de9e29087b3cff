/**
 * The human strings `docker ps` prints verbatim: Go's units.HumanDuration and moby's
 * State.String() ("Up 3 seconds", "Exited (0) 6 seconds ago", "Created").
 */
import type { ContainerState } from '../../daemon/types';
import { timeOrUndefined } from '../../daemon/time';

/** go-units HumanDuration. */
export function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < 1) return 'Less than a second';
  if (seconds === 1) return '1 second';
  if (seconds < 60) return `${seconds} seconds`;
  const minutes = Math.floor(ms / 60_000);
  if (minutes === 1) return 'About a minute';
  if (minutes < 60) return `${minutes} minutes`;
  const hours = Math.floor(ms / 3_600_000 + 0.5);
  if (hours === 1) return 'About an hour';
  if (hours < 48) return `${hours} hours`;
  if (hours < 24 * 7 * 2) return `${Math.floor(hours / 24)} days`;
  if (hours < 24 * 30 * 2) return `${Math.floor(hours / 24 / 7)} weeks`;
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24 / 30)} months`;
  return `${Math.floor(ms / 3_600_000 / 24 / 365)} years`;
}

function since(text: string, nowMs: number): number {
  const ns = timeOrUndefined(text);
  return ns === undefined ? 0 : Math.max(0, nowMs - Number(ns / 1_000_000n));
}

/** moby's State.String(). */
export function statusText(state: ContainerState, nowMs = Date.now()): string {
  if (state.running) {
    const up = humanDuration(since(state.startedAt, nowMs));
    if (state.paused) return `Up ${up} (Paused)`;
    if (state.restarting)
      return `Restarting (${state.exitCode}) ${humanDuration(since(state.finishedAt, nowMs))} ago`;
    // moby's Health.String(): "health: starting", else the status itself.
    const health = state.health;
    if (health) return `Up ${up} (${health.status === 'starting' ? 'health: starting' : health.status})`;
    return `Up ${up}`;
  }
  if (state.removalInProgress) return 'Removal In Progress';
  if (state.dead) return 'Dead';
  if (timeOrUndefined(state.startedAt) === undefined) return 'Created';
  if (timeOrUndefined(state.finishedAt) === undefined) return '';
  return `Exited (${state.exitCode}) ${humanDuration(since(state.finishedAt, nowMs))} ago`;
}
