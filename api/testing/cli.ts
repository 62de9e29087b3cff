/**
 * The real docker CLI run against an API harness (api/testing/harness.ts): what unit-level API
 * tests use to check what a user sees. The integration suite has its own (integration/harness/cli.ts)
 * for the real daemon.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

export const DOCKER_CLI = process.env.DOCKER_CLI ?? '/usr/local/bin/docker';
/** The `skip` reason for suites that need the CLI (node:test reports them as skipped, not passed). */
export const dockerCliMissing: string | false = existsSync(DOCKER_CLI)
  ? false
  : `docker CLI not found at ${DOCKER_CLI}`;

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliTarget {
  socketPath: string;
  /** DOCKER_CONFIG and HOME: keeps the user's own config (and credentials) out of the test. */
  configDir: string;
}

/** Runs `docker ARGS` against the harness; killed after `timeoutMs` (then code is null). */
export function runDockerCli(
  target: CliTarget,
  args: string[],
  options: { input?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(DOCKER_CLI, args, {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: target.configDir,
        DOCKER_HOST: `unix://${target.socketPath}`,
        DOCKER_CONFIG: target.configDir,
        DOCKER_CLI_HINTS: 'false',
      },
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 8000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(options.input);
  });
}
