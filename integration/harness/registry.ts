/**
 * A private registry for tests: Debian's docker-registry (distribution 2.8) on a free loopback
 * port, with a temp storage dir and config file, optionally behind htpasswd basic auth or token
 * (Bearer) auth. `stop()` kills and reaps it and removes its storage.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface RegistryOptions {
  /** Basic auth with one user (bcrypt htpasswd file). */
  htpasswd?: { user: string; password: string };
  /** Token auth: the registry trusts JWTs signed by the key of `rootCertBundle` (a PEM file). */
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
}

export interface RunningRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  port: number;
  /** Stops the registry (SIGTERM, then SIGKILL), reaps it and removes its storage. */
  stop(): Promise<void>;
  /** The registry's stderr so far, for failure messages. */
  logs(): string;
}

const REGISTRY_BINARY = 'docker-registry';

/** Throws a clear error when a tool a test depends on is missing (tests must fail, not skip). */
export async function requireCommand(command: string, debianPackage: string): Promise<void> {
  try {
    await execFileAsync('sh', ['-c', `command -v ${command}`]);
  } catch {
    throw new Error(`${command} is required (Debian package ${debianPackage}); scripts/setup.sh installs it`);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** A bcrypt htpasswd line (distribution accepts only bcrypt), made with libcrypt through perl. */
export async function htpasswdLine(user: string, password: string): Promise<string> {
  const alphabet = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const salt = [...randomBytes(22)].map((b) => alphabet[b % 64]).join('');
  const { stdout } = await execFileAsync('perl', [
    '-e',
    'print crypt($ARGV[0], $ARGV[1])',
    password,
    `$2b$05$${salt}`,
  ]);
  if (!stdout.startsWith('$2b$'))
    throw new Error(`this libcrypt cannot make bcrypt hashes (got ${JSON.stringify(stdout)})`);
  return `${user}:${stdout}\n`;
}

function configYaml(dir: string, port: number, auth: string): string {
  return [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${path.join(dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    auth,
  ].join('\n');
}

function probe(port: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/v2/', timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

async function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<RunningRegistry> {
  await requireCommand(REGISTRY_BINARY, 'docker-registry');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-registry-'));
  let auth = '';
  if (opts.htpasswd) {
    const file = path.join(dir, 'htpasswd');
    await fs.writeFile(file, await htpasswdLine(opts.htpasswd.user, opts.htpasswd.password));
    auth = ['auth:', '  htpasswd:', '    realm: capsule-test', `    path: ${file}`].join('\n');
  } else if (opts.token) {
    const t = opts.token;
    auth = [
      'auth:',
      '  token:',
      `    realm: ${t.realm}`,
      `    service: ${t.service}`,
      `    issuer: ${t.issuer}`,
      `    rootcertbundle: ${t.rootCertBundle}`,
    ].join('\n');
  }
  // A port picked by the kernel may be taken again before the registry binds it: retry.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const configPath = path.join(dir, 'config.yml');
    await fs.writeFile(configPath, configYaml(dir, port, auth) + '\n');
    const child = spawn(REGISTRY_BINARY, ['serve', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-20_000);
    });
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    const stop = async (): Promise<void> => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        if (!(await waitForExit(child, 3000))) {
          child.kill('SIGKILL');
          await waitForExit(child, 3000);
        }
      }
      await fs.rm(dir, { recursive: true, force: true });
    };
    const deadline = Date.now() + 15_000;
    let ready = false;
    while (Date.now() < deadline) {
      if (spawnError || child.exitCode !== null) break;
      const status = await probe(port);
      if (status === 200 || status === 401) {
        ready = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (ready) {
      return { host: `127.0.0.1:${port}`, port, stop, logs: () => stderr };
    }
    const exited = child.exitCode !== null;
    if (!exited) child.kill('SIGKILL');
    await waitForExit(child, 3000);
    if (attempt >= 3 || spawnError || !/address already in use/.test(stderr)) {
      await fs.rm(dir, { recursive: true, force: true });
      throw new Error(`docker-registry did not start: ${spawnError?.message ?? stderr.trim()}`);
    }
  }
}
