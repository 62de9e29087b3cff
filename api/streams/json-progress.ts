/**
 * Docker's JSON progress streams (pull, push, load, build): 200, `Content-Type: application/json`,
 * headers flushed at once, one JSON object per line terminated by "\r\n". An error after the
 * headers went out can only be reported in the stream: {"errorDetail":{"message"},"error"}.
 */
import type { Response } from 'express';
import { messageOf } from '../../common/errdefs';

export interface JsonProgressStream {
  write(message: object): void;
  /** Reports a failure in-stream and ends the response. */
  fail(err: unknown): void;
  end(): void;
  readonly started: boolean;
}

/** Go's json.Marshal escapes <, > and & (e.g. " ---\u003e" in build output); match it. */
function goJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[<>&\u2028\u2029]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'),
  );
}

/**
 * A progress stream whose headers are sent on the first message (or at `start()`), so that an
 * error before any progress can still be a normal JSON error response.
 */
export function jsonProgress(res: Response): JsonProgressStream & { start(): void } {
  let started = false;
  const start = (): void => {
    if (started) return;
    started = true;
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/json');
    res.flushHeaders();
  };
  return {
    start,
    get started() {
      return started;
    },
    write(message: object) {
      start();
      if (!res.destroyed) res.write(goJson(message) + '\r\n');
    },
    fail(err: unknown) {
      const message = messageOf(err);
      this.write({ errorDetail: { message }, error: message });
      this.end();
    },
    end() {
      start();
      if (!res.writableEnded) res.end();
    },
  };
}
