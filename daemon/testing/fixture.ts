/**
 * A test fixture for the daemon's unit tests: a whole daemon over the fakes (no root, no VM) on a
 * fresh data root for every test, and builders for the Docker-shaped create request.
 *
 * It lives here, not in each test file, so that the default ContainerConfig/HostConfig (which
 * grow a field whenever the domain types do) and the set-up and clean-up order are written once.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach, beforeEach } from 'node:test';
import { createSilentLogger } from '../../common/logger';
import { resolveConfig, type DaemonConfig } from '../config';
import { createDaemon, type Daemon } from '../daemon';
import type { ContainerConfig, DaemonEvent, HostConfig } from '../types';
import { FakeImageService, FakeSandboxRuntime } from './fakes';

/** What `docker create busybox` sends once the CLI has filled in its defaults. */
export function containerConfig(over: Partial<ContainerConfig> = {}): ContainerConfig {
  return {
    hostname: '',
    domainname: '',
    user: '',
    attachStdin: false,
    attachStdout: true,
    attachStderr: true,
    exposedPorts: null,
    tty: false,
    openStdin: false,
    stdinOnce: false,
    env: null,
    cmd: null,
    healthcheck: null,
    argsEscaped: false,
    image: 'busybox',
    volumes: null,
    workingDir: '',
    entrypoint: null,
    networkDisabled: false,
    macAddress: '',
    onBuild: null,
    labels: null,
    stopSignal: '',
    stopTimeout: null,
    shell: null,
    ...over,
  };
}

export function hostConfig(over: Partial<HostConfig> = {}): HostConfig {
  return {
    autoRemove: false,
    restartPolicy: { name: 'no', maximumRetryCount: 0 },
    networkMode: 'default',
    portBindings: {},
    binds: null,
    consoleSize: [0, 0],
    memory: 0,
    nanoCpus: 0,
    logConfig: { type: 'json-file', config: {} },
    runtime: '',
    passthrough: {},
    ...over,
  };
}

export interface CreateOptions {
  config?: Partial<ContainerConfig>;
  host?: Partial<HostConfig>;
  name?: string;
}

/** Creates a busybox container running `cmd` and returns its id. */
export async function createContainer(
  d: Pick<Daemon, 'containerCreate'>,
  cmd: string[],
  options: CreateOptions = {},
): Promise<string> {
  const { id } = await d.containerCreate({
    name: options.name ?? '',
    config: containerConfig({ cmd, ...options.config }),
    hostConfig: hostConfig(options.host),
  });
  return id;
}

/** Every event `d` publishes from now on, in order (the array fills as they come). */
export function recordEvents(d: Pick<Daemon, 'subscribeEvents'>): DaemonEvent[] {
  const events: DaemonEvent[] = [];
  d.subscribeEvents({ filters: {} }, (e) => events.push(e));
  return events;
}

/** Polls `fn` until it gives a value other than undefined or false, with a deadline (never a bare sleep). */
export async function until<T>(what: string, fn: () => T | undefined | false, ms = 3000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The current test's daemon and its fakes; read them inside a test or hook, never at load time. */
export interface DaemonFixture {
  readonly config: DaemonConfig;
  /** Holds busybox:latest (Env PATH=/bin, Cmd sh). */
  readonly images: FakeImageService;
  readonly runtime: FakeSandboxRuntime;
  readonly daemon: Daemon;
  /** createContainer on `daemon`. */
  create(cmd: string[], options?: CreateOptions): Promise<string>;
  /**
   * Another daemon on the same roots, images and runtime, as after a restart or a crash (the
   * earlier ones are not shut down for it). It is shut down after the test like the first.
   */
  newDaemon(): Promise<Daemon>;
  /** A fresh directory, removed with the others once the file's tests are done. */
  tempDir(prefix: string): Promise<string>;
}

/**
 * Registers the hooks (call it at the top of a test file): before each test a fresh data root and
 * a daemon on it; after each test every daemon of that test is shut down, in the order they were
 * made (shutdown may be called twice: a test that shuts a daemon down itself is fine); after the
 * file the directories go.
 *
 * `prefix` names the temp directories after the test file, so that a leftover one says whose it is.
 */
export function useDaemonFixture(prefix: string): DaemonFixture {
  const dirs: string[] = [];
  let daemons: Daemon[] = [];
  // Set by beforeEach; the getters below throw if a test file reads them before that.
  let current: { config: DaemonConfig; images: FakeImageService; runtime: FakeSandboxRuntime } | undefined;

  const tempDir = async (p: string): Promise<string> => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), p));
    dirs.push(dir);
    return dir;
  };
  const ready = (): NonNullable<typeof current> => {
    if (!current) throw new Error('daemon fixture read outside a test');
    return current;
  };
  const first = (): Daemon => {
    const d = daemons[0];
    if (!d) throw new Error('daemon fixture read outside a test');
    return d;
  };
  const newDaemon = async (): Promise<Daemon> => {
    const { config, images, runtime } = ready();
    const d = await createDaemon({ config, log: createSilentLogger(), images, runtime });
    daemons.push(d);
    return d;
  };

  beforeEach(async () => {
    const dir = await tempDir(prefix);
    current = {
      config: resolveConfig({
        socket: path.join(dir, 's'),
        dataRoot: path.join(dir, 'data'),
        execRoot: path.join(dir, 'exec'),
      }),
      images: new FakeImageService({
        images: [{ ref: 'busybox:latest', config: { Env: ['PATH=/bin'], Cmd: ['sh'] } }],
      }),
      runtime: new FakeSandboxRuntime(),
    };
    daemons = [];
    await newDaemon();
  });
  afterEach(async () => {
    for (const d of daemons) await d.shutdown();
  });
  after(async () => {
    for (const dir of dirs) await fs.rm(dir, { recursive: true, force: true });
  });

  return {
    get config() {
      return ready().config;
    },
    get images() {
      return ready().images;
    },
    get runtime() {
      return ready().runtime;
    },
    get daemon() {
      return first();
    },
    // Arrow functions, not methods: test files take them off the fixture (`const { create } = …`).
    create: (cmd, options) => createContainer(first(), cmd, options),
    newDaemon,
    tempDir,
  };
}
