/**
 * Docker's json-file log driver: one JSON object per line,
 * {"log":"<text>","stream":"stdout"|"stderr","time":"<RFC3339Nano>"}.
 *
 * Lines are cut as dockerd's log copier cuts them: a message ends at "\n" (kept in `log`); text
 * without a newline waits for more, and is written as a partial message (no trailing "\n") when it
 * reaches 16 KiB or when the run's output ends. The bytes of an entry are dockerd's, escaping
 * included (daemon/log-encoder.ts).
 *
 * Rotation (`--log-opt max-size=…`, `max-file=…`, `compress=…`) as dockerd's json-file driver
 * does it: before an entry is written, a file that reached max-size is renamed to `<log>.1` (older
 * ones shift to `.2` … up to `.<max-file - 1>`, the oldest is dropped; with `compress=true` rotated
 * files are gzipped to `.N.gz`) and a new file is started. Reads go through the rotated files,
 * oldest first, then the current one.
 *
 * Followers (`logs -f`, `attach?logs=1`) open the files and subscribe in one step of the writer's
 * queue, between two writes: they read the files up to that point, then receive every later
 * entry live, so no entry is lost or repeated between the two, even across a rotation (an opened
 * file stays readable after it was renamed).
 */
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import type { FileHandle } from 'node:fs/promises';
import { InvalidParameterError, SystemError, messageOf } from '../common/errdefs';
import { JsonLogEncoder, MAX_LOG_LINE, splitEntries } from './log-encoder';
import { formatRFC3339Nano, nowNs, parseRFC3339Nano } from './time';
import type { LogEntry, OutputChunk } from './types';

export { MAX_LOG_LINE } from './log-encoder';

interface RawEntry {
  log?: string;
  stream?: string;
  time?: string;
}

/**
 * Decodes the file's lines, with a fast path for what a container's plain output makes: a printable
 * ASCII text, at most an escaped "\n" at its end, in the layout the writer uses. Anything else goes
 * through JSON.parse (decodeEntry). Entries of one chunk share their time text: it is parsed once.
 */
class EntryDecoder {
  private timeText = '';
  private timeNs: bigint | undefined;

  decode(line: Buffer): LogEntry | undefined {
    const n = line.length;
    if (n < 40 || !startsWith(line, 0, LOG_PREFIX)) return this.slow(line);
    let i = LOG_PREFIX.length;
    let newline = false;
    let textEnd = -1;
    while (i < n) {
      const b = line[i] as number;
      if (b === 0x22) {
        textEnd = i;
        break;
      }
      if (b === 0x5c) {
        // Only a final \n takes the fast path.
        if (line[i + 1] !== 0x6e || line[i + 2] !== 0x22) return this.slow(line);
        newline = true;
        textEnd = i;
        i += 2;
        break;
      }
      if (b < 0x20 || b >= 0x7f) return this.slow(line);
      i++;
    }
    if (textEnd < 0) return this.slow(line);
    let stream: 1 | 2;
    if (startsWith(line, i, STDOUT_MIDDLE)) stream = 1;
    else if (startsWith(line, i, STDERR_MIDDLE)) stream = 2;
    else return this.slow(line);
    const timeStart = i + STDOUT_MIDDLE.length;
    const timeEnd = line.indexOf(0x22, timeStart);
    if (timeEnd < 0 || timeEnd + 2 !== n || line[timeEnd + 1] !== 0x7d) return this.slow(line);
    const timeText = line.toString('latin1', timeStart, timeEnd);
    if (timeText !== this.timeText) {
      this.timeText = timeText;
      this.timeNs = parseRFC3339Nano(timeText);
    }
    if (this.timeNs === undefined) return undefined;
    const length = textEnd - LOG_PREFIX.length;
    const data = Buffer.allocUnsafe(length + (newline ? 1 : 0));
    line.copy(data, 0, LOG_PREFIX.length, textEnd);
    if (newline) data[length] = 0x0a;
    return { stream, data, timeNs: this.timeNs };
  }

  private slow(line: Buffer): LogEntry | undefined {
    return decodeEntry(line.toString('utf8'));
  }
}

const LOG_PREFIX = Buffer.from('{"log":"');
const STDOUT_MIDDLE = Buffer.from('","stream":"stdout","time":"');
const STDERR_MIDDLE = Buffer.from('","stream":"stderr","time":"');

function startsWith(data: Buffer, at: number, prefix: Buffer): boolean {
  if (at + prefix.length > data.length) return false;
  for (let k = 0; k < prefix.length; k++) if (data[at + k] !== prefix[k]) return false;
  return true;
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

/** The json-file driver's rotation settings. */
export interface LogFileOptions {
  /** Bytes; -1 = never rotate. */
  maxSize: number;
  /** Files kept in all, the current one included (>= 1). */
  maxFiles: number;
  compress: boolean;
}

export const DEFAULT_LOG_OPTIONS: LogFileOptions = { maxSize: -1, maxFiles: 1, compress: false };

const JSON_FILE_OPTS = new Set([
  'max-file',
  'max-size',
  'compress',
  'labels',
  'labels-regex',
  'env',
  'env-regex',
  'tag',
]);

/** dockerd's create-time check of `--log-opt` keys for json-file (values are checked at start). */
export function validateLogOptions(config: Record<string, string>): void {
  for (const key of Object.keys(config)) {
    if (!JSON_FILE_OPTS.has(key)) {
      throw new InvalidParameterError(`unknown log opt '${key}' for json-file log driver`);
    }
  }
}

const DECIMAL_UNITS: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12, p: 1e15 };

/** go-units FromHumanSize: decimal units ("10k" = 10000, "1.5m" = 1500000). */
export function fromHumanSize(text: string): number {
  const m = /^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$/.exec(text);
  if (!m || m[1] === undefined) throw new Error(`invalid size: '${text}'`);
  if (!/^\d+(\.\d+)?$/.test(m[1])) throw new Error(`strconv.ParseFloat: parsing "${m[1]}": invalid syntax`);
  return Math.trunc(Number(m[1]) * (DECIMAL_UNITS[(m[2] ?? '').toLowerCase()] ?? 1));
}

function goParseBool(text: string): boolean {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(text)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(text)) return false;
  throw new Error(`strconv.ParseBool: parsing "${text}": invalid syntax`);
}

function parseRotation(config: Record<string, string>): LogFileOptions {
  let maxSize = -1;
  const sizeText = config['max-size'];
  if (sizeText !== undefined) {
    maxSize = fromHumanSize(sizeText);
    if (maxSize <= 0) throw new Error('max-size must be a positive number');
  }
  let maxFiles = 1;
  const filesText = config['max-file'];
  if (filesText !== undefined) {
    if (!/^[+-]?\d+$/.test(filesText))
      throw new Error(`strconv.Atoi: parsing "${filesText}": invalid syntax`);
    maxFiles = Number.parseInt(filesText, 10);
    if (maxFiles < 1) throw new Error('max-file cannot be less than 1');
  }
  let compress = false;
  const compressText = config.compress;
  if (compressText !== undefined) {
    compress = goParseBool(compressText);
    if (compress && (maxFiles === 1 || maxSize === -1)) {
      throw new Error('compress cannot be true when max-file is less than 2 or max-size is not set');
    }
  }
  return { maxSize, maxFiles, compress };
}

/**
 * The rotation settings from `--log-opt`s; a bad value fails the start as dockerd's does
 * (500 "failed to initialize logging driver: …").
 */
export function parseLogOptions(config: Record<string, string>): LogFileOptions {
  try {
    return parseRotation(config);
  } catch (err) {
    throw new SystemError(`failed to initialize logging driver: ${messageOf(err)}`, { cause: err });
  }
}

/** Settings for reading a log whose options may be bad (reads must still work). */
export function readOptionsOf(config: Record<string, string>): LogFileOptions {
  try {
    return parseRotation(config);
  } catch {
    return DEFAULT_LOG_OPTIONS;
  }
}

export interface LogSubscription {
  /** Next live entry; undefined once the writer closed (end of the run). */
  next(): Promise<LogEntry | undefined>;
  close(): void;
}

interface LogSource {
  handle: FileHandle;
  gzip: boolean;
  /** Read only this many bytes (the current file, as committed when opened). */
  end?: number;
}

/** The files of one log, opened at one instant, oldest first; reading them closes them. */
export class LogFiles {
  constructor(readonly sources: LogSource[]) {}

  static readonly empty = new LogFiles([]);

  async close(): Promise<void> {
    await Promise.all(this.sources.map((s) => s.handle.close().catch(() => undefined)));
  }
}

async function openIfExists(filePath: string): Promise<FileHandle | undefined> {
  try {
    return await fs.open(filePath, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Opens `<log>.<maxFiles-1>` … `<log>.1` (plain or .gz) and `<log>`, skipping missing ones. With a
 * writer, call it between writes (JsonFileLogWriter.snapshot) so that nothing rotates meanwhile.
 */
export async function openLogFiles(
  filePath: string,
  maxFiles: number,
  currentEnd?: number,
): Promise<LogFiles> {
  const sources: LogSource[] = [];
  try {
    for (let i = maxFiles - 1; i >= 1; i--) {
      const plain = await openIfExists(`${filePath}.${i}`);
      if (plain) {
        sources.push({ handle: plain, gzip: false });
        continue;
      }
      const gz = await openIfExists(`${filePath}.${i}.gz`);
      if (gz) sources.push({ handle: gz, gzip: true });
    }
    const current = await openIfExists(filePath);
    if (current) sources.push({ handle: current, gzip: false, end: currentEnd });
  } catch (err) {
    await new LogFiles(sources).close();
    throw err;
  }
  return new LogFiles(sources);
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

async function renameIfExists(from: string, to: string): Promise<void> {
  try {
    await fs.rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** Bytes of output the log writer queues before it makes the reader wait (see write()). */
export const LOG_QUEUE_HIGH_WATER = 1 << 20;

/**
 * Output of one stream cut at entry boundaries (it starts an entry and ends one; the last may be a
 * partial message), read at one instant: all its entries share that time.
 */
interface Batch {
  stream: 1 | 2;
  data: Buffer;
  timeNs: bigint;
}

/** Output bytes encoded per file write; allocated while a run writes, dropped at its end. */
const ENCODE_BUFFER_BYTES = 1 << 20;

/**
 * Appends one container's output to its json-file log, rotating it by size. One writer per
 * container, shared by its runs; every file operation runs in one queue, in order.
 *
 * A chunk of output is cut into entries only as it is encoded, straight into one buffer per file
 * write (daemon/log-encoder.ts): a container printing short lines makes millions of entries, and
 * an object or a string per entry was most of the daemon's CPU. Entry objects are made only while
 * somebody follows the log.
 */
export class JsonFileLogWriter {
  private handle: FileHandle | undefined;
  /** Bytes in the current file. */
  private size = 0;
  /** Per stream: the start of an entry still waiting for its "\n" (empty: none). */
  private readonly partial: Record<1 | 2, Buffer> = { 1: Buffer.alloc(0), 2: Buffer.alloc(0) };
  private chain: Promise<void> = Promise.resolve();
  /** Output bytes queued and not yet written. */
  private queuedBytes = 0;
  private encoder: JsonLogEncoder | undefined;
  private readonly events = new EventEmitter();
  private runOpen = false;
  private closed = false;

  private constructor(
    readonly filePath: string,
    readonly options: LogFileOptions,
  ) {
    this.events.setMaxListeners(0);
  }

  static async open(
    filePath: string,
    options: LogFileOptions = DEFAULT_LOG_OPTIONS,
  ): Promise<JsonFileLogWriter> {
    const writer = new JsonFileLogWriter(filePath, options);
    writer.handle = await fs.open(filePath, 'a', 0o640);
    writer.size = (await writer.handle.stat()).size;
    return writer;
  }

  /** Marks the start of a run: live followers stay subscribed until `endRun`. */
  beginRun(): void {
    this.runOpen = true;
  }

  get running(): boolean {
    return this.runOpen;
  }

  /**
   * Takes a chunk of output; complete entries are queued for writing at once. Returns a promise
   * when more than LOG_QUEUE_HIGH_WATER bytes wait for the disk: the caller stops reading the
   * container's output until it settles (backpressure to the guest, rather than the daemon's memory
   * growing with whatever the container writes faster than the disk takes it).
   */
  write(chunk: OutputChunk): Promise<void> | undefined {
    const stream = chunk.stream;
    const held = this.partial[stream];
    const data = held.length > 0 ? Buffer.concat([held, chunk.data]) : chunk.data;
    // Complete entries: up to the last "\n", then whole 16 KiB pieces of the line after it (the
    // entry cutting restarts after each "\n", so these are entry boundaries).
    let end = data.lastIndexOf(0x0a) + 1;
    const rest = data.length - end;
    if (rest >= MAX_LOG_LINE) end += rest - (rest % MAX_LOG_LINE);
    // A copy, so that the held bytes do not pin the whole chunk.
    this.partial[stream] = end < data.length ? Buffer.from(data.subarray(end)) : Buffer.alloc(0);
    if (end > 0) this.append([{ stream, data: data.subarray(0, end), timeNs: nowNs() }]);
    return this.queuedBytes > LOG_QUEUE_HIGH_WATER ? this.chain : undefined;
  }

  /** The run's output ended: flush partial lines, let followers finish. */
  async endRun(): Promise<void> {
    const timeNs = nowNs();
    const rest: Batch[] = [];
    for (const stream of [1, 2] as const) {
      const data = this.partial[stream];
      if (data.length > 0) rest.push({ stream, data, timeNs });
      this.partial[stream] = Buffer.alloc(0);
    }
    if (rest.length > 0) this.append(rest);
    await this.chain;
    // The encode buffer is only needed while output flows.
    this.encoder = undefined;
    this.runOpen = false;
    this.events.emit('end');
  }

  /** Settles once everything queued so far is on disk. */
  flushed(): Promise<void> {
    return this.chain;
  }

  /** Runs `task` in the write queue (between two writes). */
  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const result = this.chain.then(task);
    this.chain = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  private append(batches: Batch[]): void {
    let queued = 0;
    for (const batch of batches) queued += batch.data.length;
    this.queuedBytes += queued;
    void this.enqueue(async () => {
      try {
        await this.writeBatches(batches);
      } finally {
        // Inside the task: the queue's promise (what write() hands out) settles after this.
        this.queuedBytes -= queued;
      }
    }).catch(() => undefined);
  }

  /** Caller is in the queue. */
  private async writeBatches(batches: Batch[]): Promise<void> {
    if (this.closed || !this.handle) return;
    const encoder = (this.encoder ??= new JsonLogEncoder(ENCODE_BUFFER_BYTES));
    const { maxSize } = this.options;
    for (const batch of batches) {
      const { data } = batch;
      encoder.begin(batch.stream, formatRFC3339Nano(batch.timeNs));
      let at = 0;
      while (at < data.length) {
        // dockerd checks before each entry: a file that reached max-size is rotated first. The
        // encoder stops before an entry once size + encoded bytes reach it.
        at = encoder.encode(data, at, data.length, maxSize > 0 ? maxSize - this.size : Infinity);
        if (at === data.length) break;
        await this.flushEncoded(encoder);
        if (maxSize > 0 && this.size >= maxSize) await this.rotate();
      }
    }
    await this.flushEncoded(encoder);
    if (this.events.listenerCount('entry') > 0) {
      const entries: LogEntry[] = [];
      for (const { stream, data, timeNs } of batches) {
        for (const part of splitEntries(data)) entries.push({ stream, data: part, timeNs });
      }
      this.events.emit('entry', entries);
    }
  }

  /** Caller is in the queue. Appends what the encoder holds to the current file. */
  private async flushEncoded(encoder: JsonLogEncoder): Promise<void> {
    const bytes = encoder.bytes();
    encoder.reset();
    if (bytes.length === 0 || !this.handle) return;
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done);
      done += bytesWritten;
    }
    this.size += bytes.length;
  }

  /** Caller is in the queue. Shifts the rotated files and starts an empty current file. */
  private async rotate(): Promise<void> {
    const { maxFiles, compress } = this.options;
    const name = this.filePath;
    await this.handle?.close();
    this.handle = undefined;
    if (maxFiles >= 2) {
      const ext = compress ? '.gz' : '';
      await fs.rm(`${name}.${maxFiles - 1}${ext}`, { force: true });
      for (let i = maxFiles - 1; i > 1; i--)
        await renameIfExists(`${name}.${i - 1}${ext}`, `${name}.${i}${ext}`);
    }
    // With max-file=1 dockerd still keeps the previous file as `.1` (never read back).
    await renameIfExists(name, `${name}.1`);
    this.handle = await fs.open(name, 'w', 0o640);
    this.size = 0;
    if (compress && maxFiles >= 2 && (await exists(`${name}.1`))) {
      const source = await fs.open(`${name}.1`, 'r');
      const target = await fs.open(`${name}.1.gz`, 'w', 0o640);
      try {
        await pipeline(source.createReadStream(), zlib.createGzip(), target.createWriteStream());
      } finally {
        await source.close().catch(() => undefined);
        await target.close().catch(() => undefined);
      }
      await fs.rm(`${name}.1`, { force: true });
    }
  }

  /** Opens the log's files as they are now (between two writes). */
  snapshot(): Promise<LogFiles> {
    return this.enqueue(() => openLogFiles(this.filePath, this.options.maxFiles, this.size));
  }

  /** Opens the files and subscribes to later entries in one step: nothing lost or repeated. */
  follow(): Promise<{ files: LogFiles; subscription: LogSubscription }> {
    return this.enqueue(async () => {
      const files = await openLogFiles(this.filePath, this.options.maxFiles, this.size);
      return { files, subscription: this.subscribe() };
    });
  }

  /** Live entries from now on. */
  private subscribe(): LogSubscription {
    // Entries come in lists (one per write); `queue[0][first]` is the next one.
    const queue: LogEntry[][] = [];
    let first = 0;
    let ended = !this.runOpen;
    let wake: (() => void) | undefined;
    const onEntry = (entries: LogEntry[]): void => {
      queue.push(entries);
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
      next: async () => {
        for (;;) {
          const head = queue[0];
          if (head) {
            const entry = head[first++];
            if (first >= head.length) {
              queue.shift();
              first = 0;
            }
            if (entry) return entry;
            continue;
          }
          if (ended) return undefined;
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
        }
      },
      close,
    };
  }

  async close(): Promise<void> {
    await this.chain;
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
}

export function entryWanted(entry: LogEntry, opts: ReadLogOptions): boolean {
  if (entry.stream === 1 ? !opts.stdout : !opts.stderr) return false;
  if (opts.sinceNs !== undefined && entry.timeNs < opts.sinceNs) return false;
  if (opts.untilNs !== undefined && entry.timeNs > opts.untilNs) return false;
  return true;
}

function sourceStream(source: LogSource): Readable {
  const raw = source.handle.createReadStream({
    start: 0,
    ...(source.end !== undefined ? { end: source.end - 1 } : {}),
    autoClose: false,
  });
  if (!source.gzip) return raw;
  const gunzip = zlib.createGunzip();
  raw.on('error', (err) => gunzip.destroy(err));
  return raw.pipe(gunzip);
}

/**
 * Entries of a log's files, oldest first, filtered; `tail` keeps the last N that pass (across
 * files). Closes the files when done.
 */
export async function* readLogEntries(files: LogFiles, opts: ReadLogOptions): AsyncGenerator<LogEntry> {
  // The last `tail` entries, kept in a ring so that a long log costs O(lines), not O(lines × tail).
  const ring: LogEntry[] = [];
  let next = 0;
  /** True: hand the entry out now; false: the ring took it. */
  const take = (entry: LogEntry): boolean => {
    if (opts.tail === undefined) return true;
    if (ring.length < opts.tail) ring.push(entry);
    else {
      ring[next] = entry;
      next = (next + 1) % opts.tail;
    }
    return false;
  };
  try {
    if (opts.tail === 0) return;
    for (const source of files.sources) {
      if (source.end === 0) continue;
      const input = sourceStream(source);
      const decoder = new EntryDecoder();
      // The start of a line whose "\n" is in a later chunk.
      let carry: Buffer = Buffer.alloc(0);
      try {
        for await (const chunk of input as AsyncIterable<Buffer>) {
          const data = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk;
          // A chunk's entries are decoded before any is handed out (one await per entry is what
          // costs); a 64 KiB chunk holds at most a few thousand.
          const entries: LogEntry[] = [];
          let start = 0;
          for (let nl = data.indexOf(0x0a); nl >= 0; nl = data.indexOf(0x0a, start)) {
            const entry = nl > start ? decoder.decode(data.subarray(start, nl)) : undefined;
            start = nl + 1;
            if (entry && entryWanted(entry, opts)) entries.push(entry);
          }
          carry = start < data.length ? Buffer.from(data.subarray(start)) : Buffer.alloc(0);
          for (const entry of entries) if (take(entry)) yield entry;
        }
        // A last line without its "\n" (a file cut short).
        const entry = carry.length > 0 ? decoder.decode(carry) : undefined;
        if (entry && entryWanted(entry, opts) && take(entry)) yield entry;
      } catch {
        // A damaged rotated file (truncated gzip, say) ends that file, not the read.
      } finally {
        input.destroy();
      }
    }
  } finally {
    await files.close();
  }
  yield* ring.slice(next);
  yield* ring.slice(0, next);
}

/** Reads a log by path (no writer open): rotated files per `maxFiles`, then the current one. */
export async function* readLogFile(
  filePath: string,
  opts: ReadLogOptions & { maxFiles?: number },
): AsyncGenerator<LogEntry> {
  yield* readLogEntries(await openLogFiles(filePath, opts.maxFiles ?? 1), opts);
}
