/**
 * Benchmarks (not tests): Capsule and the reference dockerd measured side by side in one run,
 * against the same private registry and the same busybox image. Prints a Markdown table for
 * docs/performance.md.
 *
 *   npm run bench            (needs root; starts a registry, a capsuled and the reference dockerd)
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import { startSessionServices } from '../harness/session';
import { runCli } from '../harness/cli';

const REFERENCE_TOOL = process.env.CAPSULE_REFERENCE_DOCKERD ?? '/work/shared/tools/reference-dockerd';
const REFERENCE_DIR = '/var/tmp/capsule-bench-reference';
const RUNS = Number(process.env.CAPSULE_BENCH_RUNS ?? 10);

interface Engine {
  name: string;
  env: NodeJS.ProcessEnv;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

async function timeCommand(engine: Engine, args: string[], runs: number, pauseMs = 0): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    // A pause lets the warm pool refill (one boot, several seconds under TCG) before the next run.
    if (pauseMs) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    const start = process.hrtime.bigint();
    const r = await runCli(engine.env, args, { timeoutMs: 300_000 });
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (r.code !== 0) throw new Error(`${engine.name}: docker ${args.join(' ')} failed: ${r.stderr}`);
    times.push(ms);
  }
  return times;
}

/** Boot-to-agent-ready times the runtime logged ("agent ready" lines with bootMs). */
async function agentReadyTimes(logPath: string): Promise<number[]> {
  const text = await fs.readFile(logPath, 'utf8');
  const times: number[] = [];
  for (const m of text.matchAll(/agent ready.*?"bootMs":(\d+(?:\.\d+)?)/g)) times.push(Number(m[1]));
  return times;
}

async function main(): Promise<void> {
  const services = await startSessionServices();
  const ref = spawnSync(REFERENCE_TOOL, ['start', REFERENCE_DIR], { encoding: 'utf8' });
  if (ref.status !== 0) throw new Error(`reference dockerd failed to start: ${ref.stderr}`);
  const image = `${services.info.registry}/busybox:latest`;
  const capsule: Engine = { name: 'capsule', env: services.daemon.cliEnv() };
  const reference: Engine = {
    name: 'dockerd 20.10 (runc)',
    env: { ...process.env, DOCKER_HOST: `unix://${REFERENCE_DIR}/docker.sock` },
  };
  const rows: string[] = [];
  try {
    for (const engine of [capsule, reference]) {
      const pull = await runCli(engine.env, ['pull', '-q', image], { timeoutMs: 300_000 });
      if (pull.code !== 0) throw new Error(`${engine.name}: pull failed: ${pull.stderr}`);
      await timeCommand(engine, ['run', '--rm', image, 'true'], 1); // warm-up
    }
    const info = await runCli(capsule.env, ['info', '--format', '{{json .DriverStatus}}']);
    const runCapsule = await timeCommand(capsule, ['run', '--rm', image, 'true'], RUNS);
    const runReference = await timeCommand(reference, ['run', '--rm', image, 'true'], RUNS);
    const pause = Number(process.env.CAPSULE_BENCH_REFILL_MS ?? 15_000);
    const runCapsuleWarm = await timeCommand(capsule, ['run', '--rm', image, 'true'], RUNS, pause);
    const boots = await agentReadyTimes(services.info.daemonLogPath);
    const mc = median(runCapsule);
    const mr = median(runReference);
    rows.push(
      `| \`docker run --rm busybox true\`, median of ${RUNS} | ${mc.toFixed(0)} ms | ${mr.toFixed(0)} ms | ${(mc / mr).toFixed(1)}× |`,
    );
    const mw = median(runCapsuleWarm);
    rows.push(
      `| same, ${pause / 1000} s apart so a warm VM is ready each time, median of ${RUNS} | ${mw.toFixed(0)} ms | ${mr.toFixed(0)} ms | ${(mw / mr).toFixed(1)}× |`,
    );
    rows.push(
      `| boot to agent ready (median of ${boots.length} boots in this run) | ${boots.length ? median(boots).toFixed(0) + ' ms' : 'n/a'} | — | — |`,
    );
    process.stdout.write(
      [
        `Measured ${new Date().toISOString()} on ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}; capsule acceleration: ${info.stdout.trim()}`,
        '',
        '| what | Capsule | reference dockerd | ratio |',
        '|---|---|---|---|',
        ...rows,
        '',
        `raw capsule run ms: ${runCapsule.map((t) => t.toFixed(0)).join(' ')}`,
        `raw capsule run ms, warm VM ready: ${runCapsuleWarm.map((t) => t.toFixed(0)).join(' ')}`,
        `raw reference run ms: ${runReference.map((t) => t.toFixed(0)).join(' ')}`,
        `raw boot-to-agent-ready ms: ${boots.map((t) => t.toFixed(0)).join(' ')}`,
        '',
      ].join('\n'),
    );
  } finally {
    spawnSync(REFERENCE_TOOL, ['stop', REFERENCE_DIR]);
    await services.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
