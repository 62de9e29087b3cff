/**
 * Errors → HTTP, exactly once (moby's httpstatus.FromError): the class found on the error's cause
 * chain picks the status; the body is {"message": "…"} with `Content-Type: application/json`
 * exactly (the docker CLI parses the JSON only then; express would add "; charset=utf-8"), 304
 * has no body, every 5xx is logged, and a client that went away is logged as 499 without a write.
 */
import type { ErrorRequestHandler, Request, RequestHandler, Response } from 'express';
import { errorCodeOf, messageOf, type ErrorCode } from '../common/errdefs';
import type { Logger } from '../common/logger';
import { isHijacked } from './streams/hijack';

const STATUS: Partial<Record<ErrorCode, number>> = {
  NotFound: 404,
  InvalidParameter: 400,
  Conflict: 409,
  NotModified: 304,
  Unauthorized: 401,
  Forbidden: 403,
  NotImplemented: 501,
  Unavailable: 503,
};

export function statusOf(err: unknown): number {
  return STATUS[errorCodeOf(err)] ?? 500;
}

/** Writes a JSON body with the exact Content-Type dockerd uses. */
export function sendJson(res: Response, status: number, body: unknown): void {
  const text = JSON.stringify(body) + '\n';
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  res.end(text);
}

/** True when the client closed the connection before the response was complete. */
export function clientGone(req: Request, res: Response): boolean {
  return (req.socket?.destroyed ?? false) || (res.destroyed && !res.writableFinished);
}

export function logClientGone(log: Logger, req: Request): void {
  log.info('client closed the request', { status: 499, method: req.method, url: req.originalUrl });
}

export function writeError(log: Logger, req: Request, res: Response, err: unknown): void {
  const status = statusOf(err);
  const message = messageOf(err);
  if (status >= 500) {
    log.error('request failed', {
      status,
      method: req.method,
      url: req.originalUrl,
      error: message,
      stack: err instanceof Error ? err.stack : undefined,
    });
  } else {
    log.debug('request rejected', { status, method: req.method, url: req.originalUrl, error: message });
  }
  if (isHijacked(req)) return; // the connection is a raw stream now; the route closes it
  if (clientGone(req, res)) return logClientGone(log, req);
  if (res.headersSent) {
    // A stream already started: the status cannot change any more; end what was sent.
    res.end();
    return;
  }
  if (status === 304) {
    res.statusCode = 304;
    res.end();
    return;
  }
  sendJson(res, status, { message });
}

export function errorHandler(log: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, _next) => writeError(log, req, res, err);
}

/** Unknown routes: 404 {"message":"page not found"}. */
export function notFoundHandler(): RequestHandler {
  return (_req, res) => sendJson(res, 404, { message: 'page not found' });
}
