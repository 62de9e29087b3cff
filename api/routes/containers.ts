/**
 * Container routes. Handlers parse and validate, make one backend call and write the status; the
 * streaming ones (wait, attach, logs) send their headers as soon as the request is known valid.
 */
import { Router, type Request, type Response } from 'express';
import { InvalidParameterError, SystemError } from '../../common/errdefs';
import type { Logger } from '../../common/logger';
import { formatRFC3339NanoFixed, parseUnixTimestamp } from '../../daemon/time';
import type {
  AttachOptions,
  AttachSession,
  ContainerView,
  CreateContainerRequest,
  CreateContainerResult,
  FilterArgs,
  ListContainersOptions,
  LogsOptions,
  LogsResult,
  OutputChunk,
  PruneContainersResult,
  RemoveOptions,
  StopOptions,
  UpdateContainerRequest,
  UpdateContainerResult,
  WaitCondition,
  WaitHandle,
} from '../../daemon/types';
import type { StatsSample, TopResult } from '../../daemon/top-stats';
import { readJsonBody } from '../body';
import { clientGone, logClientGone, sendJson } from '../errors';
import { parseFilters, queryBool, queryBoolOr, queryInt, queryString } from '../query';
import { hijack, readRequestBody } from '../streams/hijack';
import { encodeChunk, streamContentType } from '../streams/multiplex';
import {
  decodeCreateBody,
  decodeUpdateBody,
  toContainerJSON,
  toContainerSummary,
  toPruneResponse,
  type ContainerUpdateResponse,
  type ContainerWaitResponse,
} from '../types/containers';
import { toStatsJSON, toTopResponse } from '../types/exec';
import { STORAGE_DRIVER } from '../types/system';
import { versionAtLeast } from '../version';

/** Create, inspect, list and the state transitions. */
export interface ContainerStateBackend {
  containerCreate(request: CreateContainerRequest): Promise<CreateContainerResult>;
  containerInspect(ref: string): ContainerView;
  containerList(options: ListContainersOptions): Promise<ContainerView[]>;
  containerStart(ref: string): Promise<void>;
  containerStop(ref: string, options: StopOptions): Promise<void>;
  containerRestart(ref: string, options: StopOptions): Promise<void>;
  containerKill(ref: string, signal: string | undefined): Promise<void>;
  containerPause(ref: string): Promise<void>;
  containerUnpause(ref: string): Promise<void>;
  containerRemove(ref: string, options: RemoveOptions): Promise<void>;
  containerResize(ref: string, height: number, width: number): Promise<void>;
  containerRename(ref: string, newName: string): Promise<void>;
  containerUpdate(ref: string, request: UpdateContainerRequest): Promise<UpdateContainerResult>;
  containerPrune(filters: FilterArgs): Promise<PruneContainersResult>;
}

export interface ContainerWaitBackend {
  /** Subscribes before returning (a fast exit cannot be missed); throws NotFound. */
  containerWait(ref: string, condition: WaitCondition): WaitHandle;
}

export interface ContainerAttachBackend {
  containerAttach(ref: string, options: AttachOptions): AttachSession;
}

export interface ContainerLogsBackend {
  containerLogs(ref: string, options: LogsOptions, signal?: AbortSignal): Promise<LogsResult>;
}

/** docker top and docker stats, from the guest's figures. */
export interface ContainerMonitorBackend {
  /** ps_args as the query has it ('' = dockerd's `-ef`). */
  containerTop(ref: string, psArgs?: string): Promise<TopResult>;
  containerStats(
    ref: string,
    options: { stream: boolean; oneShot: boolean },
    signal?: AbortSignal,
  ): AsyncIterable<StatsSample>;
}

export type ContainersBackend = ContainerMonitorBackend &
  ContainerStateBackend &
  ContainerWaitBackend &
  ContainerAttachBackend &
  ContainerLogsBackend;

const WAIT_CONDITIONS = new Set<WaitCondition>(['not-running', 'next-exit', 'removed']);

/** dockerd's detach keys ("ctrl-p,ctrl-q" by default) as bytes. */
export function parseDetachKeys(text: string | undefined): Buffer {
  if (text === undefined || text === '') return Buffer.from([0x10, 0x11]);
  const bytes: number[] = [];
  for (const key of text.split(',')) {
    const k = key.trim().toLowerCase();
    const ctrl = /^ctrl-([a-z@[\\\]^_])$/.exec(k);
    if (ctrl?.[1] !== undefined) {
      const c = ctrl[1];
      bytes.push(c >= 'a' && c <= 'z' ? c.charCodeAt(0) - 0x60 : c.charCodeAt(0) - 0x40);
    } else if (key.length === 1) {
      bytes.push(key.charCodeAt(0));
    } else {
      throw new InvalidParameterError(`Invalid detach keys (${text}) provided`);
    }
  }
  return Buffer.from(bytes);
}

/** Passes stdin through, holding back a partial detach sequence; reports a complete one. */
export class DetachScanner {
  private matched = 0;

  constructor(private readonly keys: Buffer) {}

  /** Bytes to forward, and whether the detach sequence completed (bytes after it are dropped). */
  push(data: Buffer): { forward: Buffer; detach: boolean } {
    const out: number[] = [];
    for (const byte of data) {
      if (byte === this.keys[this.matched]) {
        this.matched++;
        if (this.matched === this.keys.length) {
          this.matched = 0;
          return { forward: Buffer.from(out), detach: true };
        }
        continue;
      }
      for (let i = 0; i < this.matched; i++) out.push(this.keys[i] ?? 0);
      this.matched = byte === this.keys[0] ? 1 : 0;
      if (this.matched === 0) out.push(byte);
    }
    return { forward: Buffer.from(out), detach: false };
  }
}

function ref(req: Request): string {
  return String(req.params.id ?? '');
}

function stopOptions(req: Request): StopOptions {
  const options: StopOptions = {};
  const t = queryInt(req, 't');
  if (t !== undefined) options.timeout = t;
  if (versionAtLeast(req, '1.42')) {
    const signal = queryString(req, 'signal');
    if (signal) options.signal = signal;
  }
  return options;
}

/** A `since`/`until` value in unix seconds; 0 or absent = unset. */
function logTime(req: Request, key: string): bigint | undefined {
  const text = queryString(req, key);
  if (text === undefined || text === '' || text === '0') return undefined;
  const ns = parseUnixTimestamp(text);
  if (ns === undefined)
    throw new InvalidParameterError(`strconv.ParseInt: parsing ${JSON.stringify(text)}: invalid syntax`);
  return ns === 0n ? undefined : ns;
}

function tailOf(req: Request): number | undefined {
  const text = queryString(req, 'tail');
  if (text === undefined || text === '' || text === 'all') return undefined;
  if (!/^-?\d+$/.test(text)) return undefined;
  const n = Number.parseInt(text, 10);
  return n < 0 ? undefined : n;
}

/** An integer query parameter dockerd requires (strconv.Atoi on the raw value, "" included). */
function requiredInt(req: Request, key: string): number {
  const text = queryString(req, key) ?? '';
  if (!/^[+-]?\d+$/.test(text)) {
    throw new InvalidParameterError(`strconv.Atoi: parsing ${JSON.stringify(text)}: invalid syntax`);
  }
  return Number.parseInt(text, 10);
}

/**
 * The update body as dockerd reads it: CheckForJSON (400), then Go's decoder (500 "EOF" for no
 * body, 500 for malformed JSON).
 */
async function readUpdateBody(req: Request): Promise<unknown> {
  const body = await readRequestBody(req);
  const contentType = req.headers['content-type'] ?? '';
  if (!(contentType === '' && body.length === 0) && !/^application\/json(\s*;.*)?$/i.test(contentType)) {
    throw new InvalidParameterError(`Content-Type specified (${contentType}) must be 'application/json'`);
  }
  const text = body.toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    // Go's decoder texts, approximately: the offending character, or a truncated body.
    const detail = (err as Error).message;
    const token = /Unexpected token '?(.)/.exec(detail)?.[1];
    throw new SystemError(
      token === undefined ? 'unexpected EOF' : `invalid character '${token}' looking for beginning of value`,
      { cause: err },
    );
  }
}

function startWaitResponse(res: Response): void {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/json');
  res.flushHeaders();
}

export function createContainersRouter(backend: ContainersBackend, log: Logger): Router {
  const router = Router();

  router.post('/containers/create', async (req, res) => {
    const body = await readJsonBody(req);
    const { config, hostConfig } = decodeCreateBody(body);
    const result = await backend.containerCreate({
      name: queryString(req, 'name') ?? '',
      config,
      hostConfig,
    });
    sendJson(res, 201, { Id: result.id, Warnings: result.warnings });
  });

  router.get('/containers/json', async (req, res) => {
    const containers = await backend.containerList({
      all: queryBool(req, 'all'),
      limit: queryInt(req, 'limit') ?? -1,
      size: queryBool(req, 'size'),
      filters: parseFilters(queryString(req, 'filters')),
    });
    const now = Date.now();
    sendJson(
      res,
      200,
      containers.map((c) => toContainerSummary(c, now)),
    );
  });

  router.get('/containers/:id/json', (req, res) => {
    sendJson(
      res,
      200,
      toContainerJSON(backend.containerInspect(ref(req)), { storageDriver: STORAGE_DRIVER }),
    );
  });

  router.post('/containers/:id/start', async (req, res) => {
    await backend.containerStart(ref(req));
    res.status(204).end();
  });

  router.post('/containers/:id/stop', async (req, res) => {
    await backend.containerStop(ref(req), stopOptions(req));
    res.status(204).end();
  });

  router.post('/containers/:id/restart', async (req, res) => {
    await backend.containerRestart(ref(req), stopOptions(req));
    res.status(204).end();
  });

  router.post('/containers/:id/kill', async (req, res) => {
    await backend.containerKill(ref(req), queryString(req, 'signal'));
    res.status(204).end();
  });

  router.post('/containers/:id/pause', async (req, res) => {
    await backend.containerPause(ref(req));
    res.status(204).end();
  });

  router.post('/containers/:id/unpause', async (req, res) => {
    await backend.containerUnpause(ref(req));
    res.status(204).end();
  });

  router.delete('/containers/:id', async (req, res) => {
    await backend.containerRemove(ref(req), {
      force: queryBool(req, 'force'),
      removeVolumes: queryBool(req, 'v'),
    });
    res.status(204).end();
  });

  router.post('/containers/:id/resize', async (req, res) => {
    await backend.containerResize(ref(req), requiredInt(req, 'h'), requiredInt(req, 'w'));
    res.status(200).end();
  });

  router.post('/containers/:id/rename', async (req, res) => {
    await backend.containerRename(ref(req), queryString(req, 'name') ?? '');
    res.status(204).end();
  });

  router.post('/containers/:id/update', async (req, res) => {
    const request = decodeUpdateBody(await readUpdateBody(req), { atLeast140: versionAtLeast(req, '1.40') });
    const result = await backend.containerUpdate(ref(req), request);
    const body: ContainerUpdateResponse = { Warnings: result.warnings };
    sendJson(res, 200, body);
  });

  router.post('/containers/prune', async (req, res) => {
    const result = await backend.containerPrune(parseFilters(queryString(req, 'filters')));
    sendJson(res, 200, toPruneResponse(result));
  });

  router.post('/containers/:id/wait', async (req, res) => {
    const text = queryString(req, 'condition') ?? '';
    const condition = (text === '' ? 'not-running' : text) as WaitCondition;
    if (!WAIT_CONDITIONS.has(condition))
      throw new InvalidParameterError(`invalid condition: ${JSON.stringify(text)}`);
    // Subscribed (or 404) before the headers go out, so a fast exit cannot be missed.
    const handle = backend.containerWait(ref(req), condition);
    startWaitResponse(res);
    const gone = new Promise<undefined>((resolve) => {
      res.on('close', () => {
        handle.cancel();
        resolve(undefined);
      });
    });
    const result = await Promise.race([handle.result, gone]);
    if (!result || res.destroyed) return;
    const body: ContainerWaitResponse = {
      Error: result.error ? { Message: result.error } : null,
      StatusCode: result.statusCode,
    };
    res.end(JSON.stringify(body) + '\n');
  });

  router.post('/containers/:id/attach', (req, res) => {
    const options: AttachOptions = {
      stdin: queryBool(req, 'stdin'),
      stdout: queryBool(req, 'stdout'),
      stderr: queryBool(req, 'stderr'),
      stream: queryBool(req, 'stream'),
      logs: queryBool(req, 'logs'),
    };
    const detachKeys = parseDetachKeys(queryString(req, 'detachKeys'));
    const session = backend.containerAttach(ref(req), options);
    attachStream(req, res, session, detachKeys, log);
  });

  router.get('/containers/:id/top', async (req, res) => {
    const psArgs = queryString(req, 'ps_args') ?? '';
    sendJson(res, 200, toTopResponse(await backend.containerTop(ref(req), psArgs)));
  });

  router.get('/containers/:id/stats', async (req, res) => {
    const abort = new AbortController();
    const stream = queryBoolOr(req, 'stream', true);
    const samples = backend.containerStats(
      ref(req),
      { stream, oneShot: queryBool(req, 'one-shot') },
      abort.signal,
    );
    res.on('close', () => abort.abort());
    const iterator = samples[Symbol.asyncIterator]();
    // The first sample (or its error: 404 no such container) before the headers.
    const first = await iterator.next();
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/json');
    if (!stream) {
      res.end(first.done ? '' : JSON.stringify(toStatsJSON(first.value)) + '\n');
      return;
    }
    for (let item = first; !item.done; item = await iterator.next()) {
      if (res.destroyed) break;
      res.write(JSON.stringify(toStatsJSON(item.value)) + '\n');
    }
    abort.abort();
    if (clientGone(req, res)) return logClientGone(log, req);
    res.end();
  });

  router.get('/containers/:id/logs', async (req, res) => {
    const abort = new AbortController();
    const options: LogsOptions = {
      stdout: queryBool(req, 'stdout'),
      stderr: queryBool(req, 'stderr'),
      follow: queryBool(req, 'follow'),
      tail: tailOf(req),
      sinceNs: logTime(req, 'since'),
      untilNs: logTime(req, 'until'),
    };
    const timestamps = queryBool(req, 'timestamps');
    const result = await backend.containerLogs(ref(req), options, abort.signal);
    res.on('close', () => abort.abort());
    res.statusCode = 200;
    if (versionAtLeast(req, '1.42')) res.setHeader('Content-Type', streamContentType(result.tty, true));
    res.flushHeaders();
    // Frames go out in writes of up to 64 KiB: a write per entry (a 10-byte frame for a 2-byte
    // line) was most of the cost of reading a big log. Entries of a follower go out at once.
    const pending: Buffer[] = [];
    let pendingBytes = 0;
    const send = async (): Promise<void> => {
      if (pendingBytes === 0 || res.destroyed) return;
      const bytes = Buffer.concat(pending, pendingBytes);
      pending.length = 0;
      pendingBytes = 0;
      if (!res.write(bytes) && !res.destroyed) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            res.off('drain', done);
            res.off('close', done);
            resolve();
          };
          res.on('drain', done);
          res.on('close', done);
        });
      }
    };
    for await (const entry of result.entries) {
      if (res.destroyed) break;
      const payload = timestamps
        ? Buffer.concat([Buffer.from(`${formatRFC3339NanoFixed(entry.timeNs)} `), entry.data])
        : entry.data;
      const bytes = encodeChunk(result.tty, entry.stream, payload);
      if (!bytes) continue;
      pending.push(bytes);
      pendingBytes += bytes.length;
      if (options.follow || pendingBytes >= 65536) await send();
    }
    await send();
    if (clientGone(req, res)) return logClientGone(log, req);
    res.end();
  });

  return router;
}

/**
 * Wires an attach session to the hijacked connection. With a Tty (dockerd's AttachConfig.TTY) the
 * client's stdin is scanned for the detach keys, and they or the end of its stdin end the
 * attachment (the container goes on, its stdin stays open); without one nothing is scanned and the
 * end of the client's stdin closes the container's (StdinOnce).
 */
function attachStream(
  req: Request,
  res: Response,
  session: AttachSession,
  detachKeys: Buffer,
  log: Logger,
): void {
  const tty = session.tty;
  const stream = hijack(req, res, { contentType: streamContentType(tty, versionAtLeast(req, '1.42')) });
  let closed = false;
  const scanner = new DetachScanner(detachKeys);
  // dockerd copies (and scans) the client's stdin only when it reaches the container.
  const scanning = tty && session.stdin;
  const finish = (byKeys = false): void => {
    if (closed) return;
    closed = true;
    session.detach(byKeys);
    stream.end();
  };
  session.start({
    write: (chunk: OutputChunk) => {
      const bytes = encodeChunk(tty, chunk.stream, chunk.data);
      return bytes ? stream.write(bytes) : true;
    },
    drained: () => stream.drained(),
    close: () => finish(),
  });
  stream.input.on('data', (data: Buffer) => {
    if (closed) return;
    const { forward, detach } = scanning ? scanner.push(data) : { forward: data, detach: false };
    if (forward.length > 0) session.writeStdin(forward);
    if (detach) {
      log.debug('client detached', { container: session.containerId });
      finish(true);
    }
  });
  // Without a Tty the client's FIN ends its stdin only; output goes on until the run ends.
  stream.input.on('end', () => {
    if (closed) return;
    if (scanning) finish();
    else session.endStdin();
  });
  stream.input.on('error', () => undefined);
  void stream.closed.then(() => {
    if (!closed) {
      closed = true;
      session.detach();
    }
  });
}
