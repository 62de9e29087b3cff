/**
 * Exec routes: create (POST /containers/{id}/exec), start (POST /exec/{id}/start), inspect
 * (GET /exec/{id}/json) and resize (POST /exec/{id}/resize), as dockerd 20.10 answers them.
 *
 * An attached start (Detach false) checks only that the exec exists, then hijacks the connection
 * (101 UPGRADED, or 200 with the raw stream without an upgrade) and runs the exec: any error from
 * then on — already run, container not running, a process that cannot start — is written into the
 * stream as a stdout frame `<message>\r\n`, as dockerd does, and the stream closes; the exit code
 * is set before the stream closes (the CLI inspects right after). A detached start answers 200
 * with no body, or the error as JSON.
 *
 * With a Tty the stream is raw, and the client's stdin is scanned for the exec's detach keys
 * (DetachKeys, else ctrl-p,ctrl-q): they, or the end of its stdin, end the attachment and the
 * process goes on, as dockerd's AttachConfig.TTY does. Without a Tty nothing is scanned.
 */
import { Router, type Request } from 'express';
import { InvalidParameterError, messageOf } from '../../common/errdefs';
import type { Logger } from '../../common/logger';
import type { ExecCreateOptions, ExecStreams, ExecView } from '../../daemon/exec';
import { readJsonBody } from '../body';
import { sendJson } from '../errors';
import { queryString } from '../query';
import { hijack } from '../streams/hijack';
import { encodeChunk, frame, streamContentType } from '../streams/multiplex';
import { DetachScanner, parseDetachKeys } from './containers';
import { decodeExecCreateBody, decodeExecStartBody, toExecInspect } from '../types/exec';
import { versionAtLeast } from '../version';

export interface ExecBackend {
  containerExecCreate(ref: string, options: ExecCreateOptions): string;
  /** Throws NotFound (`No such exec instance`). */
  execExists(id: string): void;
  /** Detached without streams (resolves once running); attached: resolves after the exit. */
  execStart(id: string, streams?: ExecStreams, consoleSize?: [number, number]): Promise<void>;
  execInspect(id: string): ExecView;
  execResize(id: string, height: number, width: number): Promise<void>;
}

function requiredInt(req: Request, key: string): number {
  const text = queryString(req, key) ?? '';
  if (!/^[+-]?\d+$/.test(text)) {
    throw new InvalidParameterError(`strconv.Atoi: parsing ${JSON.stringify(text)}: invalid syntax`);
  }
  return Number.parseInt(text, 10);
}

/** dockerd falls back to the default keys (with a warning) when an exec's are invalid. */
function detachKeysOf(text: string): Buffer {
  try {
    return parseDetachKeys(text);
  } catch {
    return parseDetachKeys(undefined);
  }
}

/**
 * The client's stdin minus the detach sequence; `onDetach` is called when the sequence completes
 * or the input ends (with a Tty both end the attachment), and the iteration stops there.
 */
export async function* scanDetachKeys(
  input: AsyncIterable<Buffer>,
  keys: Buffer,
  onDetach: () => void,
): AsyncGenerator<Buffer> {
  const scanner = new DetachScanner(keys);
  try {
    for await (const data of input) {
      const { forward, detach } = scanner.push(data);
      if (forward.length > 0) yield forward;
      if (detach) return;
    }
  } finally {
    onDetach();
  }
}

export function createExecRouter(backend: ExecBackend, log: Logger): Router {
  const router = Router();

  router.post('/containers/:id/exec', async (req, res) => {
    const options = decodeExecCreateBody(await readJsonBody(req));
    sendJson(res, 201, { Id: backend.containerExecCreate(String(req.params.id), options) });
  });

  router.post('/exec/:id/start', async (req, res) => {
    const id = String(req.params.id);
    const body = decodeExecStartBody(await readJsonBody(req));
    backend.execExists(id);
    if (body.detach) {
      await backend.execStart(id, undefined, body.consoleSize);
      res.status(200).end();
      return;
    }
    const view = backend.execInspect(id);
    const tty = view.tty;
    const stream = hijack(req, res, { contentType: streamContentType(tty, versionAtLeast(req, '1.42')) });
    const input = stream.input;
    // Held until the exec reads it: the process starts in the guest first, and bytes that flowed
    // meanwhile with no reader would be lost (`echo x | docker exec -i` sends them at once).
    input.pause();
    input.on('error', () => undefined);
    // Not the default iterator: it destroys the stream at its end, and the input is the socket,
    // so the client's FIN (stdin EOF) would cut the output too.
    let stdin = input.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>;
    let detached: Promise<void> | undefined;
    if (tty && view.openStdin) {
      let onDetach!: () => void;
      detached = new Promise<void>((resolve) => (onDetach = resolve));
      stdin = scanDetachKeys(stdin, detachKeysOf(view.detachKeys), onDetach);
    }
    const streams: ExecStreams = {
      write: (chunk) => {
        const bytes = encodeChunk(tty, chunk.stream, chunk.data);
        return bytes ? stream.write(bytes) : true;
      },
      drained: () => stream.drained(),
      stdin,
      detached,
    };
    try {
      await backend.execStart(id, streams, body.consoleSize);
    } catch (err) {
      const text = Buffer.from(`${messageOf(err)}\r\n`);
      stream.write(tty ? text : frame(1, text));
      log.debug('exec start failed', { exec: id, error: messageOf(err) });
    }
    stream.end();
  });

  router.get('/exec/:id/json', (req, res) => {
    sendJson(res, 200, toExecInspect(backend.execInspect(String(req.params.id))));
  });

  router.post('/exec/:id/resize', async (req, res) => {
    await backend.execResize(String(req.params.id), requiredInt(req, 'h'), requiredInt(req, 'w'));
    res.status(200).end();
  });

  return router;
}
