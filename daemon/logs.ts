/**
 * Docker's json-file log driver: one JSON object per line,
 * {"log":"<text>","stream":"stdout"|"stderr","time":"<RFC3339Nano>"}.
 *
 * Lines are cut as dockerd's log copier cuts them: a message ends at "\n" (kept in `log`); text
 * without a newline waits for more, and is written as a partial message (no trailing "\n") when it
 * reaches 16 KiB or when the run's output ends.
 *
 * Followers (`logs -f`, `attach?logs=1`) read the file up to the committed size they saw when they
 * subscribed, then receive every later entry live: no entry is lost or repeated between the two.
 */
import { EventEmitter } from 'node:events';
import { createReadStream, promises as fs } from 'node:fs';
import * as readline from 'node:readline';
import type { FileHandle } from 'node:fs/promises';
import { formatRFC3339Nano, nowNs, parseRFC3339Nano } from './time';
import type { LogEntry, OutputChunk } from './types';

export const MAX_LOG_LINE = 16 * 1024;

interface RawEntry {
  log?: string;
  stream?: string;
  time?: string;
}

/** JSON as Go's encoding/json writes it: <, >, & and the JS line separators escaped. */
function goJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => {
    return '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0');
  });
}

export function encodeEntry(entry: LogEntry): string {
  return (
    goJson({
      log: entry.data.toString('utf8'),
      stream: entry.stream === 1 ? 'stdout' : 'stderr',
      time: formatRFC3339Nano(entry.timeNs),
    }) + '\n'
  );
}

export function decodeEntry(line: string): LogEntry | undefined {
  let raw: RawEntry;
  try {
    raw = JSON.parse(line) as RawEntry;
  } catch {
    return undefined;
  }
  if (typeof raw.log !== 'string' || typeof raw.time !== 'string') return undefined;
  const timeNs = parseRFC3339Nano(raw.time);
  if (timeNs === undefined) return undefined;
  return { stream: raw.stream === 'stderr' ? 2 : 1, data: Buffer.from(raw.log, 'utf8'), timeNs };
}

export interface LogSubscription {
  /** Bytes of the file that hold entries older than the first live one. */
  readonly committedBytes: number;
  /** Next live entry; undefined once the writer closed (end of the run). */
  next(): Promise<LogEntry | undefined>;
  close(): void;
}

/** Appends one container's output to its json-file log. One writer per container, shared by runs. */
export class JsonFileLogWriter {
  private handle: FileHandle | undefined;
  private committed = 0;
  private readonly partial = new Map<1 | 2, Buffer>();
  private chain: Promise<void> = Promise.resolve();
  private readonly events = new EventEmitter();
  private runOpen = false;
  private closed = false;

  private constructor(readonly filePath: string) {
    this.events.setMaxListeners(0);
  }

  static async open(filePath: string): Promise<JsonFileLogWriter> {
    const writer = new JsonFileLogWriter(filePath);
    writer.handle = await fs.open(filePath, 'a', 0o640);
    writer.committed = (await writer.handle.stat()).size;
    return writer;
  }

  get committedBytes(): number {
    return this.committed;
  }

  /** Marks the start of a run: live followers stay subscribed until `endRun`. */
  beginRun(): void {
    this.runOpen = true;
  }

  get running(): boolean {
    return this.runOpen;
  }

  /** Takes a chunk of output; complete lines are queued for writing at once. */
  write(chunk: OutputChunk): void {
    const time = nowNs();
    const buffered = this.partial.get(chunk.stream);
    let data = buffered && buffered.length > 0 ? Buffer.concat([buffered, chunk.data]) : chunk.data;
    let start = 0;
    const entries: LogEntry[] = [];
    for (;;) {
      const nl = data.indexOf(0x0a, start);
      if (nl < 0) break;
      entries.push({ stream: chunk.stream, data: data.subarray(start, nl + 1), timeNs: time });
      start = nl + 1;
    }
    data = data.subarray(start);
    while (data.length >= MAX_LOG_LINE) {
      entries.push({ stream: chunk.stream, data: data.subarray(0, MAX_LOG_LINE), timeNs: time });
      data = data.subarray(MAX_LOG_LINE);
    }
    this.partial.set(chunk.stream, Buffer.from(data));
    if (entries.length > 0) this.append(entries);
  }

  /** The run's output ended: flush partial lines, let followers finish. */
  async endRun(): Promise<void> {
    const time = nowNs();
    const rest: LogEntry[] = [];
    for (const stream of [1, 2] as const) {
      const data = this.partial.get(stream);
      if (data && data.length > 0) rest.push({ stream, data, timeNs: time });
    }
    this.partial.clear();
    if (rest.length > 0) this.append(rest);
    await this.chain;
    this.runOpen = false;
    this.events.emit('end');
  }

  /** Settles once everything queued so far is on disk. */
  flushed(): Promise<void> {
    return this.chain;
  }

  private append(entries: LogEntry[]): void {
    const text = Buffer.from(entries.map(encodeEntry).join(''), 'utf8');
    this.chain = this.chain.then(async () => {
      if (this.closed || !this.handle) return;
      await this.handle.write(text);
      this.committed += text.length;
      for (const entry of entries) this.events.emit('entry', entry);
    });
    this.chain.catch(() => undefined);
  }

  /** Subscribes to live entries; pair with reading the file up to `committedBytes`. */
  subscribe(): LogSubscription {
    const queue: LogEntry[] = [];
    let ended = !this.runOpen;
    let wake: (() => void) | undefined;
    const onEntry = (entry: LogEntry): void => {
      queue.push(entry);
      wake?.();
    };
    const onEnd = (): void => {
      ended = true;
      wake?.();
    };
    this.events.on('entry', onEntry);
    this.events.on('end', onEnd);
    const close = (): void => {
      this.events.off('entry', onEntry);
      this.events.off('end', onEnd);
      ended = true;
      wake?.();
    };
    return {
      committedBytes: this.committed,
      next: async () => {
        for (;;) {
          const entry = queue.shift();
          if (entry) return entry;
          if (ended) return undefined;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      },
      close,
    };
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    this.closed = true;
    this.events.emit('end');
    const handle = this.handle;
    this.handle = undefined;
    await handle?.close();
  }
}

export interface ReadLogOptions {
  stdout: boolean;
  stderr: boolean;
  tail?: number;
  sinceNs?: bigint;
  untilNs?: bigint;
  /** Read only this many bytes of the file (the committed size a follower subscribed at). */
  endByte?: number;
}

export function entryWanted(entry: LogEntry, opts: ReadLogOptions): boolean {
  if (entry.stream === 1 ? !opts.stdout : !opts.stderr) return false;
  if (opts.sinceNs !== undefined && entry.timeNs < opts.sinceNs) return false;
  if (opts.untilNs !== undefined && entry.timeNs > opts.untilNs) return false;
  return true;
}

/** Entries of a json-file log, oldest first, filtered; `tail` keeps the last N that pass. */
export async function* readLogFile(filePath: string, opts: ReadLogOptions): AsyncGenerator<LogEntry> {
  if (opts.tail === 0 || opts.endByte === 0) return;
  let stream;
  try {
    await fs.access(filePath);
    stream = createReadStream(filePath, opts.endByte !== undefined ? { end: opts.endByte - 1 } : {});
  } catch {
    return;
  }
  const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
  // The last `tail` entries, kept in a ring so that a long log costs O(lines), not O(lines × tail).
  const ring: LogEntry[] = [];
  let next = 0;
  try {
    for await (const line of lines) {
      if (line === '') continue;
      const entry = decodeEntry(line);
      if (!entry || !entryWanted(entry, opts)) continue;
      if (opts.tail === undefined) {
        yield entry;
      } else if (ring.length < opts.tail) {
        ring.push(entry);
      } else {
        ring[next] = entry;
        next = (next + 1) % opts.tail;
      }
    }
  } finally {
    lines.close();
    stream.destroy();
  }
  yield* ring.slice(next);
  yield* ring.slice(0, next);
}
