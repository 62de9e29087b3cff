/** System routes: /_ping, /version, /info, /events, /system/df. */
import { Router, type Request, type Response } from 'express';
import { InvalidParameterError } from '../../common/errdefs';
import { nowNs } from '../../daemon/time';
import { parseApiTimestamp, resolveTimestamp } from '../../daemon/timestamps';
import type { DiskUsage, DiskUsageOptions } from '../../daemon/daemon-images';
import type { ContainerView, DaemonEvent, EventsOptions, SystemInfo, VersionInfo } from '../../daemon/types';
import { sendJson } from '../errors';
import { parseFilters, queryString } from '../query';
import { toContainerSummary } from '../types/containers';
import { encodeEventMessage } from '../types/events';
import { toImageSummary } from '../types/images';
import { toInfoResponse, toVersionResponse } from '../types/system';
import { API_VERSION, MIN_API_VERSION, versionAtLeast } from '../version';

export interface SystemBackend {
  systemInfo(): Promise<SystemInfo>;
  systemVersion(): VersionInfo;
  subscribeEvents(
    options: EventsOptions,
    onEvent: (e: DaemonEvent) => void,
  ): { past: DaemonEvent[]; close(): void };
  systemDiskUsage(options: DiskUsageOptions): Promise<DiskUsage>;
}

/** `?type=` of `GET /system/df` (API 1.42+): which parts to compute; all when absent. */
function diskUsageOptions(req: Request): DiskUsageOptions {
  const raw = (req.query as Record<string, unknown>).type;
  const types = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map(String);
  if (!versionAtLeast(req, '1.42') || types.length === 0) {
    return { containers: true, images: true, volumes: true, buildCache: true };
  }
  const options = { containers: false, images: false, volumes: false, buildCache: false };
  for (const t of types) {
    if (t === 'container') options.containers = true;
    else if (t === 'image') options.images = true;
    else if (t === 'volume') options.volumes = true;
    else if (t === 'build-cache') options.buildCache = true;
    else throw new InvalidParameterError(`unknown object type: ${t}`);
  }
  return options;
}

/** A container of `system df`: the list shape, its sizes omitted when 0 (Go's omitempty). */
function dfContainer(c: ContainerView): object {
  const summary: Record<string, unknown> = { ...toContainerSummary(c) };
  if (summary.SizeRw === 0) delete summary.SizeRw;
  if (summary.SizeRootFs === 0) delete summary.SizeRootFs;
  return summary;
}

/** dockerd's DiskUsage body; Capsule has no build cache (BuildCache null, as dockerd with none). */
function toDiskUsageResponse(du: DiskUsage): Record<string, unknown> {
  return {
    LayersSize: du.layersSize,
    Images: du.images?.map(toImageSummary) ?? null,
    Containers: du.containers?.map(dfContainer) ?? null,
    Volumes: du.volumes,
    BuildCache: null,
    BuilderSize: 0,
  };
}

function pingHeaders(res: Response): void {
  res.setHeader('Cache-Control', 'no-cache, no-store, must-revalidate');
  res.setHeader('Pragma', 'no-cache');
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
}

/**
 * A `since`/`until` of GET /events: unix seconds with an optional fraction, as dockerd parses them
 * (its strconv error, 500, otherwise). Capsule also takes the durations and RFC3339 times the CLI
 * would have converted (`--since 10m`) for clients that send them raw; dockerd 20.10 rejects those.
 */
function eventTime(req: Request, key: string): bigint | undefined {
  const text = queryString(req, key);
  if (text === undefined || text === '') return undefined;
  try {
    return parseApiTimestamp(text);
  } catch (err) {
    try {
      return resolveTimestamp(text, nowNs());
    } catch {
      throw err;
    }
  }
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

  router.get('/system/df', async (req, res) => {
    sendJson(res, 200, toDiskUsageResponse(await backend.systemDiskUsage(diskUsageOptions(req))));
  });

  // Buffered past events (with since/until), then live ones; ends at `until`, else never (no
  // timeout: the server has none, and the headers go out at once).
  router.get('/events', (req, res) => {
    const sinceNs = eventTime(req, 'since');
    const untilNs = eventTime(req, 'until');
    if (untilNs !== undefined && sinceNs !== undefined && untilNs < sinceNs) {
      throw new InvalidParameterError(
        `\`since\` time (${queryString(req, 'since') ?? ''}) cannot be after \`until\` time (${queryString(req, 'until') ?? ''})`,
      );
    }
    const filters = parseFilters(queryString(req, 'filters'));
    let ended = false;
    let timer: NodeJS.Timeout | undefined;
    const write = (e: DaemonEvent): void => {
      if (!ended && !res.destroyed) res.write(encodeEventMessage(e));
    };
    const sub = backend.subscribeEvents({ sinceNs, untilNs, filters }, (e) => {
      if (untilNs === undefined || e.timeNs <= untilNs) write(e);
    });
    const finish = (): void => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      sub.close();
      res.end();
    };
    res.on('close', () => {
      ended = true;
      clearTimeout(timer);
      sub.close();
    });
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/json');
    res.flushHeaders();
    for (const e of sub.past) write(e);
    if (untilNs !== undefined) {
      const ms = Number((untilNs - nowNs()) / 1_000_000n);
      if (ms <= 0) finish();
      else timer = setTimeout(finish, ms);
    }
  });

  return router;
}
