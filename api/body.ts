/** JSON request bodies, checked as dockerd's CheckForJSON does. */
import type { Request } from 'express';
import { InvalidParameterError } from '../common/errdefs';
import { readRequestBody } from './streams/hijack';

/** The parsed JSON body, or undefined when there is none. */
export async function readJsonBody(req: Request): Promise<unknown> {
  const body = await readRequestBody(req);
  const contentType = req.headers['content-type'] ?? '';
  if (body.length === 0 && contentType === '') return undefined;
  if (contentType !== '' && !/^application\/json(\s*;.*)?$/i.test(contentType)) {
    throw new InvalidParameterError(`Content-Type specified (${contentType}) must be 'application/json'`);
  }
  if (body.length === 0) return undefined;
  try {
    return JSON.parse(body.toString('utf8')) as unknown;
  } catch (err) {
    throw new InvalidParameterError(`invalid JSON: ${(err as Error).message}`, { cause: err });
  }
}
