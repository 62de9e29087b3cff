/** Query and body helpers with dockerd's parsing rules (httputils.BoolValue, filters.FromJSON). */
import type { Request } from 'express';
import { InvalidParameterError } from '../common/errdefs';
import type { FilterArgs } from '../daemon/types';

/** The first value of a query parameter, or undefined when absent. */
export function queryString(req: Request, key: string): string | undefined {
  const value = (req.query as Record<string, unknown>)[key];
  const first = Array.isArray(value) ? value[0] : value;
  return typeof first === 'string' ? first : undefined;
}

/** dockerd's BoolValue: false iff absent or one of "", "0", "no", "false", "none" (case-insensitive). */
export function queryBool(req: Request, key: string): boolean {
  const value = queryString(req, key);
  if (value === undefined) return false;
  return !['', '0', 'no', 'false', 'none'].includes(value.trim().toLowerCase());
}

/** dockerd's BoolValueOrDefault: the default when the parameter is absent or empty. */
export function queryBoolOr(req: Request, key: string, fallback: boolean): boolean {
  const value = queryString(req, key);
  if (value === undefined || value === '') return fallback;
  return queryBool(req, key);
}

/** An integer parameter, undefined when absent or empty; 400 with Go's message when malformed. */
export function queryInt(req: Request, key: string): number | undefined {
  const value = queryString(req, key);
  if (value === undefined || value === '') return undefined;
  if (!/^[+-]?\d+$/.test(value)) {
    throw new InvalidParameterError(`strconv.Atoi: parsing ${JSON.stringify(value)}: invalid syntax`);
  }
  return Number.parseInt(value, 10);
}

/**
 * The `filters` parameter in both forms dockerd accepts: {"k":{"v":true}} (Go clients) and
 * {"k":["v"]} (docker-py, dockerode). Like moby's filters.Args.Get, the map form's booleans are not
 * consulted: every key of the inner map is a value.
 */
export function parseFilters(text: string | undefined): FilterArgs {
  if (text === undefined || text.trim() === '') return {};
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidParameterError(`invalid filter: ${(err as Error).message}`);
  }
  if (raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new InvalidParameterError('invalid filter: not an object');
  const out: FilterArgs = {};
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (Array.isArray(value)) {
      out[key] = value.map((v) => String(v));
    } else if (value !== null && typeof value === 'object') {
      out[key] = Object.keys(value as Record<string, unknown>);
    } else {
      throw new InvalidParameterError(`invalid filter: value of '${key}' must be a list or a map`);
    }
  }
  return out;
}
