/**
 * Runs the integration suite: starts one private registry (with the busybox fixture pushed) and
 * one private capsuled, runs every integration test file against them with node's test runner,
 * then stops both and fails if anything the daemon started is still around.
 *
 *   node dist/integration/run.js [test files...]
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { SESSION_ENV, startSessionServices } from './harness/session';
import { findLeaks } from './harness/leaks';

async function main(): Promise<number> {
  const started = Date.now();
  const requested = process.argv.slice(2);
  const files = requested.length ? requested : await defaultTestFiles();
  process.stderr.write(`integration: starting registry and capsuled\n`);
  const services = await startSessionServices();
  process.stderr.write(
    `integration: registry ${services.info.registry}, daemon ${services.info.socketPath} ` +
      `(log ${services.info.daemonLogPath}) ready in ${Date.now() - started} ms\n`,
  );
  let code = 1;
  try {
    code = await runTests(files, {
      ...process.env,
      [SESSION_ENV.socket]: services.info.socketPath,
      [SESSION_ENV.dataRoot]: services.info.dataRoot,
      [SESSION_ENV.execRoot]: services.info.execRoot,
      [SESSION_ENV.log]: services.info.daemonLogPath,
      [SESSION_ENV.registry]: services.info.registry,
      [SESSION_ENV.cliConfig]: services.info.cliConfig,
    });
  } finally {
    if (code !== 0) {
      process.stderr.write(`integration: daemon log tail:\n${await services.daemon.logTail(80)}\n`);
    }
    const execRoot = services.info.execRoot;
    await services.stop();
    const leaks = await findLeaks(execRoot);
    if (leaks.length) {
      process.stderr.write(`integration: LEAKED after daemon stop:\n  ${leaks.join('\n  ')}\n`);
      code = code || 1;
    }
  }
  process.stderr.write(`integration: done in ${Math.round((Date.now() - started) / 1000)} s, exit ${code}\n`);
  return code;
}

async function defaultTestFiles(): Promise<string[]> {
  const dir = __dirname;
  const names = await fs.readdir(dir);
  return names
    .filter((n) => n.endsWith('.test.js'))
    .sort()
    .map((n) => path.join(dir, n));
}

function runTests(files: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['--test', '--test-reporter=spec', '--test-concurrency=1', ...files],
      { stdio: 'inherit', env },
    );
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`integration: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
