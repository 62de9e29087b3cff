/**
 * `GET /containers/json` filtering, as dockerd does it: keys are ANDed, the values of one key are
 * ORed (labels are ANDed, like dockerd's `MatchKVList`); unknown keys and bad values are 400.
 */
import { InvalidParameterError, NotFoundError } from '../common/errdefs';
import { parseRFC3339Nano } from './time';
import type { ContainerView, FilterArgs } from './types';

const CONTAINER_FILTERS = new Set([
  'id',
  'name',
  'label',
  'status',
  'exited',
  'ancestor',
  'before',
  'since',
  'volume',
  'network',
  'publish',
  'expose',
  'health',
  'isolation',
  'is-task',
]);
const STATUSES = new Set(['created', 'restarting', 'running', 'removing', 'paused', 'exited', 'dead']);

/** 400 "Invalid filter 'k'" for a key outside `accepted` (moby's filters.Args.Validate). */
export function validateFilterKeys(filters: FilterArgs, accepted: ReadonlySet<string>): void {
  for (const key of Object.keys(filters)) {
    if (!accepted.has(key)) throw new InvalidParameterError(`Invalid filter '${key}'`);
  }
}

export function validateContainerFilters(filters: FilterArgs): void {
  for (const [key, values] of Object.entries(filters)) {
    if (!CONTAINER_FILTERS.has(key)) throw new InvalidParameterError(`Invalid filter '${key}'`);
    for (const value of values) {
      if (key === 'status' && !STATUSES.has(value)) {
        throw new InvalidParameterError(`Invalid filter 'status=${value}'`);
      }
      if (key === 'health' && !['starting', 'healthy', 'unhealthy', 'none'].includes(value)) {
        throw new InvalidParameterError(`Unrecognised filter value for health: ${value}`);
      }
      if (key === 'exited' && !/^-?\d+$/.test(value)) {
        throw new InvalidParameterError(`strconv.Atoi: parsing "${value}": invalid syntax`);
      }
    }
  }
}

/**
 * moby's filters.Args.MatchKVList: every `key` or `key=value` under `filterKey` must hold in
 * `attributes` (true when the filter is absent; false for empty attributes).
 */
export function matchKVList(
  filters: FilterArgs,
  filterKey: string,
  attributes: Record<string, string>,
): boolean {
  const values = filters[filterKey];
  if (!values || values.length === 0) return true;
  if (Object.keys(attributes).length === 0) return false;
  return values.every((wanted) => {
    const eq = wanted.indexOf('=');
    const key = eq < 0 ? wanted : wanted.slice(0, eq);
    if (!Object.prototype.hasOwnProperty.call(attributes, key)) return false;
    return eq < 0 || attributes[key] === wanted.slice(eq + 1);
  });
}

function labelMatches(labels: Record<string, string>, wanted: string): boolean {
  const eq = wanted.indexOf('=');
  if (eq < 0) return wanted in labels;
  return labels[wanted.slice(0, eq)] === wanted.slice(eq + 1);
}

function regexMatches(pattern: string, text: string): boolean {
  try {
    return new RegExp(pattern).test(text);
  } catch {
    return text.includes(pattern);
  }
}

export interface ContainerFilterContext {
  /** Resolves a container reference for before/since; throws NotFound. */
  resolve(ref: string): ContainerView;
  /** True when the image reference names the container's image (ancestor=). */
  imageMatches(ref: string, container: ContainerView): boolean;
}

/** Applies the filters and the list options (all, limit) to containers sorted newest first. */
export function filterContainers(
  containers: ContainerView[],
  filters: FilterArgs,
  opts: { all: boolean; limit: number },
  ctx: ContainerFilterContext,
): ContainerView[] {
  validateContainerFilters(filters);
  const values = (key: string): string[] => filters[key] ?? [];
  const created = (c: ContainerView): bigint => parseRFC3339Nano(c.created) ?? 0n;

  let beforeNs: bigint | undefined;
  let sinceNs: bigint | undefined;
  for (const ref of values('before')) {
    const c = resolveForFilter(ctx, ref);
    beforeNs = created(c);
  }
  for (const ref of values('since')) {
    const c = resolveForFilter(ctx, ref);
    sinceNs = created(c);
  }
  // A status/exited filter, before or since makes dockerd list stopped containers too.
  const all =
    opts.all ||
    values('status').length > 0 ||
    values('exited').length > 0 ||
    beforeNs !== undefined ||
    sinceNs !== undefined;

  const out: ContainerView[] = [];
  for (const c of containers) {
    if (!all && c.status !== 'running' && c.status !== 'paused' && c.status !== 'restarting') continue;
    if (beforeNs !== undefined && created(c) >= beforeNs) continue;
    if (sinceNs !== undefined && created(c) <= sinceNs) continue;
    const ids = values('id');
    if (ids.length > 0 && !ids.some((v) => c.id.startsWith(v))) continue;
    const names = values('name');
    // moby matches the name with and without its leading "/" (`name=^web$` and `name=^/web$`).
    if (names.length > 0 && !names.some((v) => regexMatches(v, c.name) || regexMatches(v, c.name.slice(1))))
      continue;
    const labels = values('label');
    if (labels.length > 0 && !labels.every((v) => labelMatches(c.config.labels ?? {}, v))) continue;
    const statuses = values('status');
    if (statuses.length > 0 && !statuses.includes(c.status)) continue;
    const exited = values('exited');
    if (exited.length > 0 && (c.status !== 'exited' || !exited.some((v) => Number(v) === c.state.exitCode)))
      continue;
    const ancestors = values('ancestor');
    if (ancestors.length > 0 && !ancestors.some((v) => ctx.imageMatches(v, c))) continue;
    const health = values('health');
    // moby: a container without a healthcheck is "none"; the others by State.Health.Status.
    if (health.length > 0 && !health.includes(c.state.health?.status ?? 'none')) continue;
    const tasks = values('is-task');
    if (tasks.length > 0 && !tasks.includes('false')) continue;
    out.push(c);
    if (opts.limit > 0 && out.length >= opts.limit) break;
  }
  return out;
}

function resolveForFilter(ctx: ContainerFilterContext, ref: string): ContainerView {
  try {
    return ctx.resolve(ref);
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`no such container ${ref}`, { cause: err });
    throw err;
  }
}
