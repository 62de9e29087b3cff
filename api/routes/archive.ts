/**
 * A container's filesystem: `docker cp` (HEAD/GET/PUT /containers/{id}/archive), `docker export`
 * and `docker diff`. The backend does the work where it is safe (daemon/archive.ts); handlers parse
 * the query, make one call and write dockerd's headers.
 */
import { Router, type Request, type Response } from 'express';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ExtractOptions, FilesystemChange, PathStatView } from '../../daemon/archive';
import type { CommitOptions } from '../../daemon/commit';
import { encodePathStat } from '../../daemon/archive';
import { readJsonBody } from '../body';
import { sendJson } from '../errors';
import { queryBool, queryBoolOr, queryString } from '../query';
import { decodeContainerConfig } from '../types/containers';

export interface ContainerArchiveBackend {
  containerStatPath(ref: string, path: string): Promise<PathStatView>;
  containerArchive(ref: string, path: string): Promise<{ stat: PathStatView; stream: Readable }>;
  containerExtract(
    ref: string,
    path: string,
    tar: AsyncIterable<Uint8Array>,
    options: ExtractOptions,
  ): Promise<void>;
  containerExport(ref: string): Promise<Readable>;
  containerChanges(ref: string): Promise<FilesystemChange[]>;
  /** Returns the new image id. */
  containerCommit(options: CommitOptions): Promise<string>;
}

const PATH_STAT_HEADER = 'X-Docker-Container-Path-Stat';

/** Every value of a repeated query parameter (`changes=…&changes=…`). */
function queryAll(req: Request, key: string): string[] {
  const value = (req.query as Record<string, unknown>)[key];
  const values = Array.isArray(value) ? value : value === undefined ? [] : [value];
  return values.filter((v): v is string => typeof v === 'string');
}

/** Streams a tar as application/x-tar; a failure mid-way cuts the connection (never a valid tar). */
async function sendTar(res: Response, tar: Readable): Promise<void> {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'application/x-tar');
  try {
    await pipeline(tar, res);
  } catch (err) {
    tar.destroy();
    res.destroy(err as Error);
  }
}

export function createArchiveRouter(backend: ContainerArchiveBackend): Router {
  const router = Router();
  const pathOf = (value: string | undefined): string => value ?? '';

  router.head('/containers/:id/archive', async (req, res) => {
    const stat = await backend.containerStatPath(req.params.id, pathOf(queryString(req, 'path')));
    res.setHeader(PATH_STAT_HEADER, encodePathStat(stat));
    res.status(200).end();
  });

  router.get('/containers/:id/archive', async (req, res) => {
    const { stat, stream } = await backend.containerArchive(req.params.id, pathOf(queryString(req, 'path')));
    res.setHeader(PATH_STAT_HEADER, encodePathStat(stat));
    await sendTar(res, stream);
  });

  router.put('/containers/:id/archive', async (req, res) => {
    await backend.containerExtract(req.params.id, pathOf(queryString(req, 'path')), req, {
      noOverwriteDirNonDir: queryBool(req, 'noOverwriteDirNonDir'),
      copyUIDGID: queryBool(req, 'copyUIDGID'),
    });
    res.status(200).end();
  });

  router.get('/containers/:id/export', async (req, res) => {
    await sendTar(res, await backend.containerExport(req.params.id));
  });

  router.get('/containers/:id/changes', async (req, res) => {
    const changes = await backend.containerChanges(req.params.id);
    // dockerd marshals an empty (nil) list as null.
    sendJson(res, 200, changes.length === 0 ? null : changes.map((c) => ({ Path: c.path, Kind: c.kind })));
  });

  // docker commit: 201 {"Id"}. pause defaults to true (dockerd's BoolValueOrDefault).
  router.post('/commit', async (req, res) => {
    const repository = queryString(req, 'repo');
    const tag = queryString(req, 'tag');
    const comment = queryString(req, 'comment');
    const author = queryString(req, 'author');
    // docker-py and other API clients may send the new image's config as the body (the CLI sends
    // none); "null" and no body mean the container's own.
    const body = await readJsonBody(req);
    const config =
      body !== null && typeof body === 'object'
        ? decodeContainerConfig(body as Record<string, unknown>)
        : undefined;
    const id = await backend.containerCommit({
      container: queryString(req, 'container') ?? '',
      ...(repository !== undefined ? { repository } : {}),
      ...(tag !== undefined ? { tag } : {}),
      ...(comment !== undefined ? { comment } : {}),
      ...(author !== undefined ? { author } : {}),
      changes: queryAll(req, 'changes'),
      ...(config !== undefined ? { config } : {}),
      pause: queryBoolOr(req, 'pause', true),
    });
    sendJson(res, 201, { Id: id });
  });

  return router;
}
