/**
 * Test harness: a daemon built on FakeImageService + FakeSandboxRuntime in a temp dir, served by
 * the real API server on a temp unix socket.
 */
import { promises as fs } from 'node:fs';
import type * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { createSilentLogger, type Logger } from '../../common/logger';
import { resolveConfig } from '../../daemon/config';
import { createDaemon, type Daemon } from '../../daemon/daemon';
import { FakeImageService, FakeSandboxRuntime, type FakeImageSpec } from '../../daemon/testing/fakes';
import { closeApiServer, createApiServer } from '../server';

export interface Harness {
  dir: string;
  socketPath: string;
  daemon: Daemon;
  images: FakeImageService;
  runtime: FakeSandboxRuntime;
  server: http.Server;
  close(): Promise<void>;
}

export const BUSYBOX: FakeImageSpec = { ref: 'busybox:latest', config: { Env: ['PATH=/bin'], Cmd: ['sh'] } };

export async function startHarness(
  options: { images?: FakeImageSpec[]; registry?: FakeImageSpec[]; log?: Logger } = {},
): Promise<Harness> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-api-'));
  const socketPath = path.join(dir, 'docker.sock');
  const log = options.log ?? createSilentLogger();
  const config = resolveConfig({
    socket: socketPath,
    dataRoot: path.join(dir, 'data'),
    execRoot: path.join(dir, 'exec'),
  });
  const images = new FakeImageService({
    images: options.images ?? [BUSYBOX],
    registry: options.registry ?? [],
  });
  const runtime = new FakeSandboxRuntime();
  const daemon = await createDaemon({ config, log, images, runtime });
  const server = createApiServer(daemon, log);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    dir,
    socketPath,
    daemon,
    images,
    runtime,
    server,
    async close() {
      const closed = closeApiServer(server, 200);
      await daemon.shutdown();
      await closed;
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
