/**
 * Capsule's guest agent: the gRPC server (guest/protocol/agent.proto) that runs inside every VM and
 * runs the container through crun.
 *
 * Start-up is what a cold VM waits for, and under TCG every instruction of it is emulated, so the
 * bundle (scripts/bundle-agent.js) is built to be a V8 startup snapshot: loading the modules
 * (grpc-js, protobufjs) and the protocol happens here at module level, once, when the guest asset
 * build runs `node --snapshot-blob agent.<accel>.blob --build-snapshot agent.js` in a VM;
 * /init then starts `node --snapshot-blob …`, which deserializes that heap and calls serve(). Run
 * as a plain script (`node agent.js`: tests on the host, or a VM without a usable snapshot), the
 * same file loads and serves at once. What must not be in a snapshot (sockets, timers, handles,
 * the environment, timings) happens in serve() only.
 *
 * Environment:
 *   CAPSULE_AGENT_LISTEN  serve gRPC on this unix socket instead of the virtio-serial port (tests
 *                         on the host)
 *   CAPSULE_AGENT_PORT    name of the virtio-serial port (default agent.0)
 *   CAPSULE_BUNDLE_DIR    where OCI bundles go (default /run/capsule/bundles)
 *   CAPSULE_CRUN          the OCI runtime binary (default crun); CAPSULE_CRUN_ROOT its state dir
 *                         (default /run/crun); capsule-console (terminals) is taken from the same
 *                         directory when CAPSULE_CRUN is absolute (the agent disk's bin dir)
 *   CAPSULE_EXEC_HELPER   capsule-exec (execs without a terminal; default: beside crun, as
 *                         capsule-console)
 *   CAPSULE_AGENT_STARTED a file created as soon as serve() runs (/init: the snapshot was usable)
 *   CAPSULE_WARMUP_DIR    scratch dir of WarmUp (default /run/capsule/warm-up);
 *   CAPSULE_WARMUP_BUSYBOX the static busybox WarmUp copies there (default /bin/busybox)
 *   CAPSULE_AGENT_PROTO   agent.proto, when the bundle has no embedded descriptor (run from source)
 */
import { bundleStartedAfterMs } from './threadpool';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';
import { AGENT_OOM_SCORE_ADJ, besideCrun, ContainerManager } from './containers';
import { createAgentService, uptimeMs, type AgentTimes } from './server';
import { findVirtioPort, VirtioBridge } from './virtio-bridge';

/** agent.proto compiled to protobufjs JSON by scripts/bundle-agent.js; absent when run from source. */
declare const __CAPSULE_AGENT_DESCRIPTOR__: Parameters<typeof protoLoader.fromJSON>[0] | undefined;

const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: Number, defaults: true };

function log(message: string, meta?: Record<string, unknown>): void {
  const rest = meta && Object.keys(meta).length > 0 ? ' ' + JSON.stringify(meta) : '';
  process.stderr.write(`capsule-agent: [${(uptimeMs() / 1000).toFixed(3)}] ${message}${rest}\n`);
}

function findProto(): string {
  const candidates = [
    process.env.CAPSULE_AGENT_PROTO,
    path.join(__dirname, 'agent.proto'), // build/guest/agent.js + agent.proto
    path.resolve(__dirname, '../protocol/agent.proto'), // run from source
    path.resolve(__dirname, '../../../guest/protocol/agent.proto'), // dist/guest/agent/main.js
  ];
  for (const candidate of candidates) {
    if (candidate && existsSync(candidate)) return candidate;
  }
  throw new Error(`agent.proto not found (looked in ${candidates.filter(Boolean).join(', ')})`);
}

function loadService(): grpc.ServiceDefinition {
  const definition =
    typeof __CAPSULE_AGENT_DESCRIPTOR__ === 'undefined'
      ? protoLoader.loadSync(findProto(), LOADER_OPTIONS)
      : protoLoader.fromJSON(__CAPSULE_AGENT_DESCRIPTOR__, LOADER_OPTIONS);
  return (
    grpc.loadPackageDefinition(definition) as unknown as {
      capsule: { agent: { v1: { Agent: grpc.ServiceClientConstructor } } };
    }
  ).capsule.agent.v1.Agent.service;
}

// Module level: done once, at snapshot build time when there is a snapshot.
const service = loadService();
/** Node's start to here, ms; from a snapshot it is the build's figure and not reported. */
const loadedAfterMs = Math.round(process.uptime() * 1000);

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

/**
 * The VM's RAM is the container's memory limit (--memory sizes the VM), so a container that runs out
 * of it meets the kernel's OOM killer, which must pick the container's process, never the agent:
 * the agent has to survive to report exit 137 and OOMKilled. Children inherit the value, so crun is
 * started at 0 again (containers.ts spawnOutsideOomProtection).
 */
async function protectFromOomKiller(): Promise<boolean> {
  try {
    await fs.writeFile('/proc/self/oom_score_adj', String(AGENT_OOM_SCORE_ADJ));
    return true;
  } catch (err) {
    log('cannot set oom_score_adj', { error: (err as Error).message });
    return false;
  }
}

async function serve(fromSnapshot: boolean): Promise<void> {
  // Before the first use of libuv's thread pool (a snapshot kept the build's environment, not ours).
  process.env.UV_THREADPOOL_SIZE ??= '6';
  const started = process.env.CAPSULE_AGENT_STARTED;
  if (started) await fs.writeFile(started, '').catch(() => undefined);
  // When node started, in guest uptime.
  const nodeUptimeMs = Math.round(process.uptime() * 1000);
  const times: AgentTimes = { startMs: Math.max(0, uptimeMs() - nodeUptimeMs), readyMs: 0 };
  const phases: Record<string, number> = fromSnapshot
    ? { snapshotDeserialized: nodeUptimeMs }
    : { nodeStarted: bundleStartedAfterMs, modulesLoaded: loadedAfterMs };
  const phase = (name: string) => (phases[name] = uptimeMs() - times.startMs);

  const listen = process.env.CAPSULE_AGENT_LISTEN;
  // In the guest only: on the host (tests) the agent is one process among many.
  const oomProtected = listen ? false : await protectFromOomKiller();
  const bundlesDir = process.env.CAPSULE_BUNDLE_DIR ?? '/run/capsule/bundles';
  await fs.mkdir(bundlesDir, { recursive: true, mode: 0o700 });
  const manager = new ContainerManager({
    crunPath: process.env.CAPSULE_CRUN ?? 'crun',
    crunRoot: process.env.CAPSULE_CRUN_ROOT ?? '/run/crun',
    bundlesDir,
    log,
    warmUpDir: process.env.CAPSULE_WARMUP_DIR,
    warmUpBusybox: process.env.CAPSULE_WARMUP_BUSYBOX,
    resetOomScoreAdj: oomProtected,
    execHelperPath: process.env.CAPSULE_EXEC_HELPER,
  });
  const server = new grpc.Server();
  // Next to crun on the agent disk (guest/assets/build.sh), like capsule-console.
  const crunPath = process.env.CAPSULE_CRUN ?? 'crun';
  const setClockPath = process.env.CAPSULE_SETCLOCK ?? besideCrun(crunPath, 'capsule-setclock');
  server.addService(service, createAgentService(manager, times, { setClockPath }));

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
  log('serving', {
    port: devicePath,
    snapshot: fromSnapshot,
    startupMs: times.readyMs - times.startMs,
    phases,
  });
  await bridge.run();
}

function run(fromSnapshot: boolean): void {
  serve(fromSnapshot).catch((err: unknown) => {
    log('fatal', { error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exit(1);
  });
}

if (v8.startupSnapshot?.isBuildingSnapshot()) {
  v8.startupSnapshot.setDeserializeMainFunction(() => run(true));
} else {
  run(false);
}
