/**
 * capsuled: the composition root. Parses flags and the daemon.json-style configuration file
 * (`--config-file`, default /etc/capsule/daemon.json), builds the logger, the process supervisor, the
 * image service, the sandbox runtime (after choosing the accelerator), the daemon and the API
 * server, listens on the unix socket, and tears everything down on SIGTERM/SIGINT.
 *
 * The socket's directory is created 0750 (group `docker` when that group exists, else root) and
 * the socket is 0660 with the same group: only root and that group can drive the daemon, which
 * is root-equivalent access. A leftover socket is removed only when no daemon answers on it.
 */
import { promises as fs, readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { closeApiServer, createApiServer } from '../api/server';
import { messageOf } from '../common/errdefs';
import { createRootLogger, type Logger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { DEFAULT_CONFIG_FILE, loadConfigFile, resolveConfig, type DaemonConfig } from '../daemon/config';
import { createDaemon } from '../daemon/daemon';
import { CAPSULE_VERSION } from '../daemon/version';
import { createImageService } from '../images/image-service';
import { chooseAccel } from '../runtime/accel';
import { loadGuestAssets } from '../runtime/guest-assets';
import { createSandboxRuntime } from '../runtime/sandbox';

const USAGE = `Usage: capsuled [options]

  --config-file FILE         daemon.json-style settings (default ${DEFAULT_CONFIG_FILE}; may be
                             missing unless named here). Keys: hosts, data-root, exec-root,
                             guest-assets, accel, log-level, debug, insecure-registries,
                             registry-mirrors, max-concurrent-downloads, warm-pool, log-driver,
                             log-opts. An option set both here and by a flag is an error, as
                             with dockerd.
  --socket PATH              API unix socket (default /run/capsule/docker.sock; env CAPSULE_SOCKET)
  -H, --host unix://PATH     the same, dockerd's spelling (unix sockets only)
  --data-root DIR            persistent state (default /var/lib/capsule; env CAPSULE_DATA_ROOT)
  --exec-root DIR            per-run VM state (default /run/capsule/vm; env CAPSULE_EXEC_ROOT)
  --guest-assets DIR         guest kernel/initramfs/agent disk (default /var/cache/capsule/guest)
  --accel auto|kvm|tcg       hardware acceleration (default auto: probe KVM, fall back to TCG)
  --log-level LEVEL          error|warn|info|debug (default info; env CAPSULE_LOG_LEVEL)
  -D, --debug                debug logging (and Debug: true in docker info)
  --insecure-registry HOST   registry reached without TLS verification (repeatable)
  --registry-mirror URL      Docker Hub mirror, tried before Docker Hub (repeatable;
                             env CAPSULE_REGISTRY_MIRRORS)
  --max-concurrent-downloads N   parallel layer downloads per pull (default 3)
  --warm-pool N              VMs kept booted for the next container start (default 1; 0: none)
  --log-driver json-file     containers' logging driver (json-file is the only one)
  --log-opt KEY=VALUE        default json-file option of new containers, e.g. max-size=10m,
                             max-file=3 (repeatable); a container's own --log-opt wins
  --version                  print the version and exit
`;

function parseFlags(argv: string[]): {
  config: DaemonConfig;
  configFile: string | undefined;
  version: boolean;
  help: boolean;
} {
  const { values } = parseArgs({
    args: argv,
    options: {
      'config-file': { type: 'string' },
      socket: { type: 'string' },
      host: { type: 'string', short: 'H', multiple: true },
      debug: { type: 'boolean', short: 'D' },
      'registry-mirror': { type: 'string', multiple: true },
      'max-concurrent-downloads': { type: 'string' },
      'warm-pool': { type: 'string' },
      'log-driver': { type: 'string' },
      'log-opt': { type: 'string', multiple: true },
      'data-root': { type: 'string' },
      'exec-root': { type: 'string' },
      'guest-assets': { type: 'string' },
      accel: { type: 'string' },
      'log-level': { type: 'string' },
      'insecure-registry': { type: 'string', multiple: true },
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  const explicitFile = values['config-file'];
  const file = loadConfigFile(explicitFile ?? DEFAULT_CONFIG_FILE, explicitFile !== undefined);
  const config = resolveConfig(
    {
      socket: values.socket,
      host: values.host,
      dataRoot: values['data-root'],
      execRoot: values['exec-root'],
      guestAssets: values['guest-assets'],
      accel: values.accel,
      logLevel: values['log-level'],
      debug: values.debug,
      insecureRegistry: values['insecure-registry'],
      registryMirror: values['registry-mirror'],
      maxConcurrentDownloads: values['max-concurrent-downloads'],
      warmPool: values['warm-pool'],
      logDriver: values['log-driver'],
      logOpt: values['log-opt'],
    },
    process.env,
    file,
  );
  return { config, configFile: file?.path, version: values.version ?? false, help: values.help ?? false };
}

/** The gid of the `docker` group, when there is one. */
function dockerGroupId(): number | undefined {
  try {
    for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
      const [name, , gid] = line.split(':');
      if (name === 'docker' && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
    }
  } catch {
    // no /etc/group: root only
  }
  return undefined;
}

/** True when something accepts connections on the socket. */
function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

async function prepareSocket(socketPath: string, gid: number | undefined, log: Logger): Promise<void> {
  const dir = path.dirname(socketPath);
  await fs.mkdir(dir, { recursive: true, mode: 0o750 });
  // Only tighten a directory we own the meaning of; never loosen a shared one such as /run.
  if (dir !== '/' && dir !== '/run' && dir !== '/var/run' && dir !== '/tmp') {
    await fs.chmod(dir, 0o750);
    if (gid !== undefined) await fs.chown(dir, 0, gid).catch(() => undefined);
  }
  const existing = await fs.lstat(socketPath).catch(() => undefined);
  if (!existing) return;
  if (!existing.isSocket())
    throw new Error(`${socketPath} exists and is not a socket; refusing to replace it`);
  if (await socketAnswers(socketPath)) throw new Error(`another daemon is listening on ${socketPath}`);
  log.info('removing stale socket', { socket: socketPath });
  await fs.rm(socketPath, { force: true });
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  const { config, configFile, version, help } = parseFlags(argv);
  if (help) {
    process.stdout.write(USAGE);
    return;
  }
  if (version) {
    process.stdout.write(`capsuled ${CAPSULE_VERSION}\n`);
    return;
  }
  const log = createRootLogger({ level: config.logLevel });
  log.info('capsuled starting', {
    version: CAPSULE_VERSION,
    socket: config.socketPath,
    dataRoot: config.dataRoot,
    configFile: configFile ?? '(none)',
    registryMirrors: config.registryMirrors,
    insecureRegistries: config.insecureRegistries,
    logDriver: config.logDriver,
    logOpts: config.logOpts,
  });

  const supervisor = new ProcessSupervisor(log.child({ component: 'supervisor' }));
  await fs.mkdir(config.dataRoot, { recursive: true, mode: 0o711 });
  await fs.mkdir(config.execRoot, { recursive: true, mode: 0o700 });

  const assets = await loadGuestAssets(config.guestAssetsDir);
  const accel = await chooseAccel(config.accel, {
    supervisor,
    log,
    assets,
    stateDir: path.join(config.dataRoot, 'runtime'),
  });
  log.info(`acceleration: ${accel}`, { accel, setting: config.accel });

  const images = createImageService({
    root: path.join(config.dataRoot, 'images'),
    log: log.child({ component: 'images' }),
    insecureRegistries: config.insecureRegistries,
    registryMirrors: config.registryMirrors,
    maxConcurrentDownloads: config.maxConcurrentDownloads,
  });
  await images.ready();
  const runtime = await createSandboxRuntime({
    supervisor,
    log: log.child({ component: 'runtime' }),
    assetsDir: config.guestAssetsDir,
    accel,
    execRoot: config.execRoot,
    warmPoolSize: config.warmPoolSize,
  });
  const daemon = await createDaemon({ config, log, images, runtime });
  const server = createApiServer(daemon, log.child({ component: 'api' }));

  const gid = dockerGroupId();
  await prepareSocket(config.socketPath, gid, log);
  const previousUmask = process.umask(0o117);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(previousUmask);
  }
  await fs.chmod(config.socketPath, 0o660);
  if (gid !== undefined) await fs.chown(config.socketPath, 0, gid).catch(() => undefined);
  log.info('API listening', {
    socket: config.socketPath,
    accel,
    guestKernel: runtime.info().guestKernelRelease,
    group: gid === undefined ? 'root' : 'docker',
  });

  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) {
      log.warn('second signal: exiting at once', { signal });
      process.exit(1);
    }
    stopping = true;
    log.info('shutting down', { signal });
    const closed = closeApiServer(server, 5000);
    try {
      await daemon.shutdown();
      await runtime.shutdown();
      await supervisor.terminateAll();
      await closed;
    } catch (err) {
      log.error('error during shutdown', { error: messageOf(err) });
    }
    await fs.rm(config.socketPath, { force: true });
    log.info('stopped');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`capsuled: ${messageOf(err)}\n`);
  process.exit(1);
});
