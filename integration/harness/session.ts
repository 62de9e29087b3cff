/**
 * The integration session: one private registry and one private capsuled shared by every
 * integration test file (VMs under TCG are slow; starting them once keeps the run short).
 * integration/run.ts starts them and passes their addresses to the test processes in CAPSULE_IT_*
 * variables; a test file run on its own starts a session of its own instead.
 */
import Docker from 'dockerode';
import { TestDaemon } from './daemon';

export interface Session {
  dockerHost: string;
  socketPath: string;
  dataRoot: string;
  execRoot: string;
  daemonLogPath: string;
  /** host:port of the private registry, holding `busybox:latest`. */
  registry: string;
  /** `${registry}/busybox:latest` */
  busybox: string;
  docker: Docker;
  cliEnv(): NodeJS.ProcessEnv;
  /** Ends what this process started (nothing when the session came from run.ts). */
  close(): Promise<void>;
}

export const SESSION_ENV = {
  socket: 'CAPSULE_IT_SOCKET',
  dataRoot: 'CAPSULE_IT_DATA_ROOT',
  execRoot: 'CAPSULE_IT_EXEC_ROOT',
  log: 'CAPSULE_IT_DAEMON_LOG',
  registry: 'CAPSULE_IT_REGISTRY',
  cliConfig: 'CAPSULE_IT_CLI_CONFIG',
} as const;

let current: Promise<Session> | undefined;

export function session(): Promise<Session> {
  current ??= openSession();
  return current;
}

async function openSession(): Promise<Session> {
  const socket = process.env[SESSION_ENV.socket];
  if (socket) {
    return describe({
      socketPath: socket,
      dataRoot: need(SESSION_ENV.dataRoot),
      execRoot: need(SESSION_ENV.execRoot),
      daemonLogPath: need(SESSION_ENV.log),
      registry: need(SESSION_ENV.registry),
      cliConfig: need(SESSION_ENV.cliConfig),
      close: async () => undefined,
    });
  }
  // Standalone: start our own registry and daemon.
  const started = await startSessionServices();
  return describe({ ...started.info, close: started.stop });
}

export interface SessionServices {
  info: {
    socketPath: string;
    dataRoot: string;
    execRoot: string;
    daemonLogPath: string;
    registry: string;
    cliConfig: string;
  };
  daemon: TestDaemon;
  stop(): Promise<void>;
}

export async function startSessionServices(): Promise<SessionServices> {
  // Loaded lazily: the registry harness pulls in the fixture builder.
  const { startRegistry } = await import('./registry');
  const { pushBusybox } = await import('./fixtures');
  const registry = await startRegistry();
  let daemon: TestDaemon | undefined;
  try {
    await pushBusybox(registry.host);
    daemon = await TestDaemon.start();
  } catch (err) {
    await registry.stop();
    throw err;
  }
  const started = daemon;
  return {
    daemon: started,
    info: {
      socketPath: started.socketPath,
      dataRoot: started.dataRoot,
      execRoot: started.execRoot,
      daemonLogPath: started.logPath,
      registry: registry.host,
      cliConfig: `${started.baseDir}/docker-cli`,
    },
    stop: async () => {
      await started.cleanup(process.env.CAPSULE_IT_KEEP === '1');
      await registry.stop();
    },
  };
}

function describe(info: SessionServices['info'] & { close(): Promise<void> }): Session {
  const dockerHost = `unix://${info.socketPath}`;
  return {
    dockerHost,
    socketPath: info.socketPath,
    dataRoot: info.dataRoot,
    execRoot: info.execRoot,
    daemonLogPath: info.daemonLogPath,
    registry: info.registry,
    busybox: `${info.registry}/busybox:latest`,
    docker: new Docker({ socketPath: info.socketPath }),
    cliEnv: () => ({ ...process.env, DOCKER_HOST: dockerHost, DOCKER_CONFIG: info.cliConfig }),
    close: info.close,
  };
}

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`integration session: ${name} is not set`);
  return value;
}
