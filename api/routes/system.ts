/** System routes: /_ping, /version, /info, /events. */
import { Router, type Request, type Response } from 'express';
import { InvalidParameterError } from '../../common/errdefs';
import { parseUnixTimestamp } from '../../daemon/time';
import type { DaemonEvent, EventsOptions, SystemInfo, VersionInfo } from '../../daemon/types';
import { sendJson } from '../errors';
import { parseFilters, queryString } from '../query';
import { toEventMessage } from '../types/events';
import { toInfoResponse, toVersionResponse } from '../types/system';
import { API_VERSION, MIN_API_VERSION } from '../version';

export interface SystemBackend {
  systemInfo(): Promise<SystemInfo>;
  systemVersion(): VersionInfo;
  subscribeEvents(
    options: EventsOptions,
    onEvent: (e: DaemonEvent) => void,
  ): { past: DaemonEvent[]; close(): void };
}

function pingHeaders(res: Response): void {
  res.setHeader('Cache-Control', 'no-cache, no-store, must-revalidate');
  res.setHeader('Pragma', 'no-cache');
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
}

function timestamp(req: Request, key: string): bigint | undefined {
  const text = queryString(req, key);
  if (text === undefined || text === '') return undefined;
  const ns = parseUnixTimestamp(text);
  if (ns === undefined) throw new InvalidParameterError(`invalid ${key} timestamp: ${JSON.stringify(text)}`);
  return ns;
}

export function createSystemRouter(backend: SystemBackend): Router {
  const router = Router();

  router.head('/_ping', (_req, res) => {
    pingHeaders(res);
    res.setHeader('Content-Length', '0');
    res.status(200).end();
  });

  router.get('/_ping', (_req, res) => {
    pingHeaders(res);
    res.setHeader('Content-Length', '2');
    res.status(200).end('OK');
  });

  router.get('/version', (_req, res) => {
    sendJson(res, 200, toVersionResponse(backend.systemVersion(), API_VERSION, MIN_API_VERSION));
  });

  router.get('/info', async (_req, res) => {
    sendJson(res, 200, toInfoResponse(await backend.systemInfo()));
  });

  router.get('/events', (req, res) => {
    const sinceNs = timestamp(req, 'since');
    const untilNs = timestamp(req, 'until');
    const filters = parseFilters(queryString(req, 'filters'));
    let ended = false;
    const finish = (): void => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      sub.close();
      res.end();
    };
    const write = (e: DaemonEvent): void => {
      if (!ended && !res.destroyed) res.write(JSON.stringify(toEventMessage(e)) + '\n');
    };
    const sub = backend.subscribeEvents({ sinceNs, untilNs, filters }, (e) => {
      write(e);
      if (untilNs !== undefined && e.timeNs >= untilNs) finish();
    });
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/json');
    res.flushHeaders();
    for (const e of sub.past) write(e);
    let timer: NodeJS.Timeout | undefined;
    if (untilNs !== undefined) {
      const ms = Number((untilNs - BigInt(Date.now()) * 1_000_000n) / 1_000_000n);
      if (ms <= 0) finish();
      else timer = setTimeout(finish, ms);
    }
    res.on('close', () => {
      ended = true;
      clearTimeout(timer);
      sub.close();
    });
  });

  return router;
}
