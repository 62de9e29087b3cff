/**
 * Connection hijacking for attach (and later exec start), as dockerd does it.
 *
 * - The client asked for an upgrade (`Connection: Upgrade`, `Upgrade: tcp`; the docker CLI always
 *   does): Node hands such requests to the server's 'upgrade' event. The server reads the request
 *   body off the socket, marks the request with the socket and the bytes after the body, and
 *   routes it through the same express app with a ServerResponse bound to that socket — so a 404
 *   is still an ordinary HTTP response. A route that hijacks writes exactly
 *   `HTTP/1.1 101 UPGRADED` + Content-Type + `Connection: Upgrade` + `Upgrade: tcp` (+ the usual
 *   identity headers), then raw bytes flow both ways.
 * - No upgrade asked (dockerode without `hijack`): `200 OK` with the stream's Content-Type, no
 *   Content-Length and no chunked encoding, then the raw stream; the connection closes at the end.
 *
 * Half-close: a client's FIN only ends its input (the CLI sends it at once when there is no
 * stdin); output continues until the stream ends, and the socket is never ended because of it.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import type { Request, Response } from 'express';

const UPGRADE = Symbol('capsule.upgrade');
const HIJACKED = Symbol('capsule.hijacked');

interface UpgradeContext {
  socket: Duplex;
  /** The request body, read off the socket before routing. */
  body: Buffer;
  /** Bytes the client sent after the body (early stdin). */
  rest: Buffer;
}

type Marked = { [UPGRADE]?: UpgradeContext; [HIJACKED]?: boolean };

export function markUpgrade(req: IncomingMessage, context: UpgradeContext): void {
  (req as unknown as Marked)[UPGRADE] = context;
}

export function upgradeContext(req: IncomingMessage): UpgradeContext | undefined {
  return (req as unknown as Marked)[UPGRADE];
}

export function isHijacked(req: IncomingMessage): boolean {
  return (req as unknown as Marked)[HIJACKED] === true;
}

const MAX_UPGRADE_BODY = 1 << 20;

/**
 * Reads an upgrade request's body (Content-Length or chunked) from `head` and the socket. Resolves
 * with the body and whatever followed it; the socket is left paused.
 */
export function readUpgradeBody(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): Promise<{ body: Buffer; rest: Buffer }> {
  const chunked = /chunked/i.test(String(req.headers['transfer-encoding'] ?? ''));
  const length = Number.parseInt(String(req.headers['content-length'] ?? '0'), 10) || 0;
  return new Promise((resolve, reject) => {
    let buffered = head;
    const attempt = (): boolean => {
      const parsed = chunked
        ? parseChunked(buffered)
        : buffered.length >= length
          ? { body: buffered.subarray(0, length), used: length }
          : undefined;
      if (!parsed) {
        if (buffered.length > MAX_UPGRADE_BODY) {
          cleanup();
          reject(new Error('request body too large'));
          return true;
        }
        return false;
      }
      cleanup();
      resolve({ body: Buffer.from(parsed.body), rest: Buffer.from(buffered.subarray(parsed.used)) });
      return true;
    };
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      attempt();
    };
    const onEnd = (): void => {
      cleanup();
      resolve({
        body: Buffer.from(buffered.subarray(0, Math.min(length, buffered.length))),
        rest: Buffer.alloc(0),
      });
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(err);
    };
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.pause();
    };
    if (attempt()) return;
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.resume();
  });
}

/** Parses a complete chunked body; undefined while incomplete. */
function parseChunked(data: Buffer): { body: Buffer; used: number } | undefined {
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = data.indexOf('\r\n', offset);
    if (lineEnd < 0) return undefined;
    const size = Number.parseInt(data.subarray(offset, lineEnd).toString('latin1').split(';')[0] ?? '', 16);
    if (Number.isNaN(size)) return { body: Buffer.concat(parts), used: data.length };
    const start = lineEnd + 2;
    if (size === 0) {
      // Trailers end with an empty line.
      const end = data.indexOf('\r\n', start);
      if (end < 0) return undefined;
      return { body: Buffer.concat(parts), used: end + 2 };
    }
    if (data.length < start + size + 2) return undefined;
    parts.push(data.subarray(start, start + size));
    offset = start + size + 2;
  }
}

/** The request body, for upgraded and ordinary requests alike. */
export async function readRequestBody(req: Request, limit = 10 << 20): Promise<Buffer> {
  const upgraded = upgradeContext(req);
  if (upgraded) return upgraded.body;
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export interface HijackedStream {
  /** Client input after the request (stdin); ends at the client's FIN. */
  readonly input: Readable;
  /** Writes output; false = wait for `drained()`. */
  write(data: Buffer): boolean;
  drained(): Promise<void>;
  /** Flushes and closes the connection (output finished). */
  end(): void;
  /** Resolves when the connection is gone (either side). */
  readonly closed: Promise<void>;
}

export interface HijackOptions {
  contentType: string;
}

function identityHeaderLines(res: Response, contentType: string): string {
  const lines: string[] = [];
  for (const [name, value] of Object.entries(res.getHeaders())) {
    if (
      value === undefined ||
      /^(content-type|content-length|connection|upgrade|transfer-encoding)$/i.test(name)
    )
      continue;
    const canonical = name.replace(/(^|-)([a-z])/g, (_m, sep: string, c: string) => sep + c.toUpperCase());
    for (const v of Array.isArray(value) ? value : [value]) lines.push(`${canonical}: ${String(v)}\r\n`);
  }
  return `Content-Type: ${contentType}\r\n${lines.join('')}`;
}

/** Takes over the connection for a raw bidirectional stream (see file comment). */
export function hijack(req: Request, res: Response, options: HijackOptions): HijackedStream {
  (req as unknown as Marked)[HIJACKED] = true;
  const upgraded = upgradeContext(req);
  if (upgraded) {
    const socket = upgraded.socket;
    const head =
      'HTTP/1.1 101 UPGRADED\r\n' +
      identityHeaderLines(res, options.contentType) +
      'Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n';
    // The express response must never write on this socket again.
    res.detachSocket(socket as never);
    socket.write(head);
    if (upgraded.rest.length > 0) socket.unshift(upgraded.rest);
    socket.resume();
    const closed = new Promise<void>((resolve) => {
      socket.once('close', () => resolve());
    });
    socket.on('error', () => undefined);
    return {
      input: socket as Readable,
      write: (data) => (socket.destroyed ? true : socket.write(data)),
      drained: () =>
        socket.destroyed || !socket.writableNeedDrain
          ? Promise.resolve()
          : new Promise((resolve) => {
              const done = (): void => {
                socket.off('drain', done);
                socket.off('close', done);
                resolve();
              };
              socket.on('drain', done);
              socket.on('close', done);
            }),
      end: () => {
        if (socket.destroyed) return;
        // Ends our side; the client closes its side when it has read everything. A client that
        // never does is cut off after a grace period.
        socket.end();
        setTimeout(() => socket.destroy(), 30_000).unref();
      },
      closed,
    };
  }

  // No upgrade: a 200 whose body is the raw stream, delimited by closing the connection.
  res.shouldKeepAlive = false;
  res.statusCode = 200;
  res.setHeader('Content-Type', options.contentType);
  res.removeHeader('Content-Length');
  res.removeHeader('Transfer-Encoding'); // tells Node: neither chunked nor a length
  res.flushHeaders();
  const closed = new Promise<void>((resolve) => {
    res.once('close', () => resolve());
  });
  return {
    input: req,
    write: (data) => (res.destroyed ? true : res.write(data)),
    drained: () =>
      res.destroyed || !res.writableNeedDrain
        ? Promise.resolve()
        : new Promise((resolve) => {
            const done = (): void => {
              res.off('drain', done);
              res.off('close', done);
              resolve();
            };
            res.on('drain', done);
            res.on('close', done);
          }),
    end: () => {
      if (!res.destroyed) res.end();
    },
    closed,
  };
}
