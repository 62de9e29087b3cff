/** Small HTTP helpers for tests: plain requests and raw (hijacked) connections on a unix socket. */
import * as http from 'node:http';
import * as net from 'node:net';

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
  json<T = unknown>(): T;
}

export function request(
  socketPath: string,
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string> } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const payload =
      options.body === undefined
        ? undefined
        : Buffer.isBuffer(options.body)
          ? options.body
          : Buffer.from(JSON.stringify(options.body));
    const headers: Record<string, string> = { ...(options.headers ?? {}) };
    if (payload && !headers['Content-Type']) headers['Content-Type'] = 'application/json';
    if (payload) headers['Content-Length'] = String(payload.length);
    const req = http.request({ socketPath, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          text: body.toString(),
          json: <T>() => JSON.parse(body.toString()) as T,
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** A raw connection: write a request by hand, read everything the server sends. */
export class RawConnection {
  readonly socket: net.Socket;
  private data = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  ended = false;

  constructor(socketPath: string) {
    this.socket = net.connect(socketPath);
    this.socket.on('data', (d: Buffer) => {
      this.data = Buffer.concat([this.data, d]);
      this.notify();
    });
    this.socket.on('end', () => {
      this.ended = true;
      this.notify();
    });
    this.socket.on('close', () => {
      this.ended = true;
      this.notify();
    });
    this.socket.on('error', () => undefined);
  }

  private notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  write(text: string | Buffer): void {
    this.socket.write(text);
  }

  received(): Buffer {
    return this.data;
  }

  /** Waits until the received bytes satisfy `test` (or the connection ended), with a deadline. */
  async until(test: (data: Buffer) => boolean, timeoutMs = 3000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!test(this.data)) {
      if (this.ended) break;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; received: ${JSON.stringify(this.data.toString('latin1'))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.data;
  }

  async untilEnd(timeoutMs = 3000): Promise<Buffer> {
    return this.until(() => this.ended, timeoutMs);
  }

  /** Splits the received bytes at the end of the response head. */
  split(): { head: string; body: Buffer } {
    const at = this.data.indexOf('\r\n\r\n');
    if (at < 0) return { head: this.data.toString('latin1'), body: Buffer.alloc(0) };
    return { head: this.data.subarray(0, at + 4).toString('latin1'), body: this.data.subarray(at + 4) };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Polls `check` until it returns a value other than undefined, or fails after the deadline. */
export async function eventually<T>(
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 3000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error('condition not met before the deadline');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One line of GET /events, the fields the tests read. */
export interface EventLine {
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes: Record<string, string> };
}

/** The events of container `id` from `since` (unix seconds) until a second past now. */
export async function containerEvents(socketPath: string, id: string, since: number): Promise<EventLine[]> {
  const until = Math.ceil(Date.now() / 1000) + 1;
  const filters = encodeURIComponent(JSON.stringify({ container: [id] }));
  const events = await request(
    socketPath,
    'GET',
    `/v1.41/events?since=${since}&until=${until}&filters=${filters}`,
  );
  return events.text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as EventLine);
}
