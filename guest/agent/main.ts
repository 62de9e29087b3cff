/**
 * Capsule's guest agent: the gRPC server (guest/protocol/agent.proto) that runs inside every VM as
 * `node --jitless /agent/agent.js` (bundled to one file: module resolution is slow under TCG) and
 * runs the container through crun.
 *
 * Environment:
 *   CAPSULE_AGENT_LISTEN  serve gRPC on this unix socket instead of the virtio-serial port (tests
 *                         on the host)
 *   CAPSULE_AGENT_PORT    name of the virtio-serial port (default agent.0)
 *   CAPSULE_BUNDLE_DIR    where OCI bundles go (default /run/capsule/bundles)
 *   CAPSULE_CRUN          the OCI runtime binary (default crun); CAPSULE_CRUN_ROOT its state dir
 *                         (default /run/crun)
 *   CAPSULE_AGENT_PROTO   agent.proto (default: next to this file, else the source tree's)
 */
import { bundleStartedAfterMs } from './threadpool';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { ContainerManager } from './containers';
import { createAgentService, uptimeMs, type AgentTimes } from './server';
import { findVirtioPort, VirtioBridge } from './virtio-bridge';

// When node started, in guest uptime: module loading is part of the agent's start time.
const loadedMs = uptimeMs();
const times: AgentTimes = {
  startMs: Math.max(0, loadedMs - Math.round(process.uptime() * 1000)),
  readyMs: 0,
};

function log(message: string, meta?: Record<string, unknown>): void {
  const rest = meta && Object.keys(meta).length > 0 ? ' ' + JSON.stringify(meta) : '';
  process.stderr.write(`capsule-agent: [${(uptimeMs() / 1000).toFixed(3)}] ${message}${rest}\n`);
}

function findProto(): string {
  const candidates = [
    process.env.CAPSULE_AGENT_PROTO,
    path.join(__dirname, 'agent.proto'), // bundle: build/guest/agent.js + agent.proto
    path.resolve(__dirname, '../protocol/agent.proto'), // run from source
    path.resolve(__dirname, '../../../guest/protocol/agent.proto'), // dist/guest/agent/main.js
  ];
  for (const candidate of candidates) {
    if (candidate && existsSync(candidate)) return candidate;
  }
  throw new Error(`agent.proto not found (looked in ${candidates.filter(Boolean).join(', ')})`);
}

async function bind(server: grpc.Server, socketPath: string): Promise<void> {
  await fs.rm(socketPath, { force: true });
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix:${socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
      err ? reject(err) : resolve(),
    ),
  );
}

/** Docker sets these per network namespace; the container shares the VM's, so set them there. */
async function dockerNetworkSysctls(): Promise<void> {
  const values: [string, string][] = [
    ['/proc/sys/net/ipv4/ip_unprivileged_port_start', '0'],
    ['/proc/sys/net/ipv4/ping_group_range', '0 2147483647'],
  ];
  for (const [file, value] of values) {
    await fs
      .writeFile(file, value)
      .catch((err: Error) => log('cannot set sysctl', { file, error: err.message }));
  }
}

async function main(): Promise<void> {
  const phases: Record<string, number> = {
    nodeStarted: bundleStartedAfterMs,
    modulesLoaded: loadedMs - times.startMs,
  };
  const phase = (name: string) => (phases[name] = uptimeMs() - times.startMs);
  const definition = protoLoader.loadSync(findProto(), {
    keepCase: true,
    longs: Number,
    enums: Number,
    defaults: true,
  });
  const service = (
    grpc.loadPackageDefinition(definition) as unknown as {
      capsule: { agent: { v1: { Agent: grpc.ServiceClientConstructor } } };
    }
  ).capsule.agent.v1.Agent.service;
  phase('protoLoaded');

  const bundlesDir = process.env.CAPSULE_BUNDLE_DIR ?? '/run/capsule/bundles';
  await fs.mkdir(bundlesDir, { recursive: true, mode: 0o700 });
  const manager = new ContainerManager({
    crunPath: process.env.CAPSULE_CRUN ?? 'crun',
    crunRoot: process.env.CAPSULE_CRUN_ROOT ?? '/run/crun',
    bundlesDir,
    log,
  });
  const server = new grpc.Server();
  server.addService(service, createAgentService(manager, times));

  const transport: { bridge?: VirtioBridge } = {};
  const shutdown = (signal: string) => {
    log('shutting down', { signal });
    transport.bridge?.stop();
    void manager.killAll().finally(() => {
      server.forceShutdown();
      process.exit(0);
    });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));

  const listen = process.env.CAPSULE_AGENT_LISTEN;
  if (listen) {
    await bind(server, listen);
    times.readyMs = uptimeMs();
    log('serving', { socket: listen, startupMs: times.readyMs - times.startMs, phases });
    return;
  }

  const localSocket = '/run/capsule/agent.sock';
  await fs.mkdir(path.dirname(localSocket), { recursive: true });
  const [, devicePath] = await Promise.all([
    bind(server, localSocket).then(() => phase('bound')),
    findVirtioPort(process.env.CAPSULE_AGENT_PORT ?? 'agent.0').then((dev) => (phase('portFound'), dev)),
    dockerNetworkSysctls(),
  ]);
  const bridge = new VirtioBridge({ devicePath, localSocket, log });
  transport.bridge = bridge;
  times.readyMs = uptimeMs();
  log('serving', { port: devicePath, startupMs: times.readyMs - times.startMs, phases });
  await bridge.run();
}

main().catch((err: unknown) => {
  log('fatal', { error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  process.exit(1);
});
