/**
 * The API server: an express app behind a node http.Server, with one router per API area.
 *
 * Requests carrying `Connection: Upgrade` (attach, exec start) arrive on the server's 'upgrade'
 * event; they are routed through the same app with a ServerResponse bound to their socket, so a
 * hijacking route answers 101 and any other outcome (404, 409 …) is an ordinary HTTP response.
 *
 * Timeouts: no request timeout (uploads and builds can be long), and no idle timeout on sockets
 * (logs -f, events and wait stay open as long as the client wants).
 */
import * as http from 'node:http';
import type { Duplex } from 'node:stream';
import express from 'express';
import { messageOf } from '../common/errdefs';
import type { Logger } from '../common/logger';
import { errorHandler, notFoundHandler } from './errors';
import { createArchiveRouter, type ContainerArchiveBackend } from './routes/archive';
import { createAuthRouter, type AuthBackend } from './routes/auth';
import { createContainersRouter, type ContainersBackend } from './routes/containers';
import { createExecRouter, type ExecBackend } from './routes/exec';
import { createImagesRouter, type ImagesBackend } from './routes/images';
import { createSystemRouter, type SystemBackend } from './routes/system';
import { isHijacked, markUpgrade, readUpgradeBody } from './streams/hijack';
import { identityHeaders, versionPrefix } from './version';

/** Everything the API needs from the daemon: the union of the routers' narrow backends. */
export type ApiBackend = SystemBackend &
  ContainersBackend &
  ExecBackend &
  ContainerArchiveBackend &
  ImagesBackend &
  AuthBackend;

export function createApp(backend: ApiBackend, log: Logger): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.set('query parser', 'simple');
  app.use(identityHeaders);
  app.use(versionPrefix);
  app.use((req, _res, next) => {
    log.debug('request', { method: req.method, url: req.originalUrl });
    next();
  });
  app.use(createSystemRouter(backend));
  app.use(createContainersRouter(backend, log));
  app.use(createExecRouter(backend, log));
  app.use(createArchiveRouter(backend));
  app.use(createImagesRouter(backend));
  app.use(createAuthRouter(backend));
  app.use(notFoundHandler());
  app.use(errorHandler(log));
  return app;
}

const UPGRADED = Symbol('capsule.upgradedSockets');
type TrackedServer = http.Server & { [UPGRADED]?: Set<Duplex> };

/** Routes an upgrade request through the app on a response bound to its socket. */
function handleUpgrade(
  app: express.Express,
  log: Logger,
  req: http.IncomingMessage,
  socket: Duplex,
  head: Buffer,
): void {
  socket.on('error', (err) => log.debug('upgraded socket error', { error: err.message }));
  readUpgradeBody(req, socket, head).then(
    ({ body, rest }) => {
      markUpgrade(req, { socket, body, rest });
      const res = new http.ServerResponse(req);
      res.shouldKeepAlive = false;
      res.assignSocket(socket as never);
      res.on('finish', () => {
        // An ordinary answer (an error, say): the connection is done.
        if (!isHijacked(req)) {
          res.detachSocket(socket as never);
          socket.end();
        }
      });
      app(req as express.Request, res as express.Response);
    },
    (err: unknown) => {
      log.debug('bad upgrade request', { error: messageOf(err) });
      const message = JSON.stringify({ message: messageOf(err) });
      socket.end(
        'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n' +
          `Content-Length: ${Buffer.byteLength(message)}\r\nConnection: close\r\n\r\n${message}`,
      );
    },
  );
}

export function createApiServer(backend: ApiBackend, log: Logger): http.Server {
  const app = createApp(backend, log);
  const server = http.createServer(
    { requestTimeout: 0, keepAliveTimeout: 5 * 60_000, headersTimeout: 5 * 60_000 + 1000 },
    app,
  );
  server.requestTimeout = 0;
  server.timeout = 0;
  server.keepAliveTimeout = 5 * 60_000;
  server.headersTimeout = 5 * 60_000 + 1000;
  // Upgraded sockets are invisible to closeAllConnections(); track them for shutdown.
  const upgraded = new Set<Duplex>();
  (server as TrackedServer)[UPGRADED] = upgraded;
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    upgraded.add(socket);
    socket.once('close', () => upgraded.delete(socket));
    handleUpgrade(app, log, req, socket, head);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (err.code === 'ECONNRESET' || !socket.writable) return socket.destroy();
    log.debug('bad request', { error: err.message });
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  });
  return server;
}

/**
 * Stops accepting connections and resolves once every connection is gone. Idle keep-alive
 * connections close at once; streams still open after `graceMs` (attach, logs -f, events, wait)
 * are cut. Call after the daemon stopped its containers, so that attach streams ended cleanly.
 */
export function closeApiServer(server: http.Server, graceMs = 2000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.closeAllConnections();
      for (const socket of (server as TrackedServer)[UPGRADED] ?? []) socket.destroy();
    }, graceMs);
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}
