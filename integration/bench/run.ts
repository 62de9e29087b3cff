/**
 * Benchmarks (not tests): Capsule and the reference dockerd measured side by side in one run,
 * against the same private registry and the same busybox image. Prints a Markdown table for
 * docs/performance.md.
 *
 *   npm run bench            (needs root; starts a registry, a capsuled and the reference dockerd)
 *
 * CAPSULE_BENCH_SERIES=run|pull|all (default all) picks the series: `run` times `docker run --rm`,
 * `pull` times `docker pull` of a multi-layer image of tens of MiB (CAPSULE_BENCH_PULL_RUNS, default
 * 5) on both engines, removing the image between runs.
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import { startSessionServices } from '../harness/session';
import { runCli } from '../harness/cli';
import { TestDaemon } from '../harness/daemon';
import { buildLargeImage, pushImage } from '../harness/fixtures';
import { startRegistry } from '../harness/registry';

const REFERENCE_TOOL = process.env.CAPSULE_REFERENCE_DOCKERD ?? '/work/shared/tools/reference-dockerd';
const REFERENCE_DIR = '/var/tmp/capsule-bench-reference';
const RUNS = Number(process.env.CAPSULE_BENCH_RUNS ?? 10);
const PULL_RUNS = Number(process.env.CAPSULE_BENCH_PULL_RUNS ?? 5);
const SERIES = process.env.CAPSULE_BENCH_SERIES ?? 'all';

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

/**
 * Times `docker pull IMAGE` from scratch on each engine, the image (and with it its layers)
 * removed before each run. Runs alternate between the engines so that load from other work on
 * the machine falls on both alike.
 */
async function timePulls(engines: Engine[], image: string, runs: number): Promise<number[][]> {
  const times: number[][] = engines.map(() => []);
  for (let i = 0; i < runs; i++) {
    for (const [n, engine] of engines.entries()) {
      await runCli(engine.env, ['rmi', image], { timeoutMs: 300_000 });
      const start = process.hrtime.bigint();
      const r = await runCli(engine.env, ['pull', '-q', image], { timeoutMs: 600_000 });
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (r.code !== 0) throw new Error(`${engine.name}: docker pull ${image} failed: ${r.stderr}`);
      times[n]?.push(ms);
    }
  }
  for (const engine of engines) {
    const rm = await runCli(engine.env, ['rmi', image], { timeoutMs: 300_000 });
    if (rm.code !== 0) throw new Error(`${engine.name}: docker rmi ${image} failed: ${rm.stderr}`);
  }
  return times;
}

/**
 * The pull series. Capsule's side is a capsuled of its own with no warm pool, so no VM boots
 * during the timed pulls (pulling involves no VM); dockerd is the reference started by main().
 */
async function benchPull(registry: string, reference: Engine): Promise<{ rows: string[]; raw: string[] }> {
  // busybox + 4 layers of ≈ 24 MiB in ≈ 300 files each, ≈ 1.75× compressible with gzip.
  const built = await buildLargeImage({ layers: 5, layerBytes: 24 * 1024 * 1024, seed: 11 });
  const pushed = await pushImage(registry, 'bench/large', 'v1', built);
  const compressed = built.layers.reduce((a, l) => a + l.blob.length, 0);
  const daemon = await TestDaemon.start({ args: ['--warm-pool', '0'] });
  try {
    const capsule: Engine = { name: 'capsule', env: daemon.cliEnv() };
    const [pc = [], pr = []] = await timePulls([capsule, reference], pushed.reference, PULL_RUNS);
    const unpackMs = [
      ...(await fs.readFile(daemon.logPath, 'utf8')).matchAll(/layer unpacked.*?"ms":(\d+)/g),
    ].map((m) => Number(m[1]));
    const mc = median(pc);
    const mr = median(pr);
    const mib = (compressed / 1048576).toFixed(1);
    return {
      rows: [
        `| \`docker pull\` of a ${built.layers.length}-layer image (${mib} MiB compressed), image removed between runs, median of ${PULL_RUNS} | ${mc.toFixed(0)} ms | ${mr.toFixed(0)} ms | ${(mc / mr).toFixed(2)}× |`,
      ],
      raw: [
        `raw capsule pull ms: ${pc.map((t) => t.toFixed(0)).join(' ')}`,
        `raw reference pull ms: ${pr.map((t) => t.toFixed(0)).join(' ')}`,
        `capsule layer unpack ms (from its log, per layer): ${unpackMs.join(' ')}`,
      ],
    };
  } finally {
    await daemon.cleanup();
  }
}

async function main(): Promise<void> {
  const ref = spawnSync(REFERENCE_TOOL, ['start', REFERENCE_DIR], { encoding: 'utf8' });
  if (ref.status !== 0) throw new Error(`reference dockerd failed to start: ${ref.stderr}`);
  const reference: Engine = {
    name: 'dockerd 20.10 (runc)',
    env: { ...process.env, DOCKER_HOST: `unix://${REFERENCE_DIR}/docker.sock` },
  };
  const rows: string[] = [];
  const raw: string[] = [];
  let info = { stdout: '' };
  try {
    if (SERIES === 'pull' || SERIES === 'all') {
      // Its own registry, before the session's capsuled (whose warm pool boots a VM) is started.
      const registry = await startRegistry();
      try {
        const pull = await benchPull(registry.host, reference);
        rows.push(...pull.rows);
        raw.push(...pull.raw);
      } finally {
        await registry.stop();
      }
    }
    if (SERIES === 'run' || SERIES === 'all') {
      const services = await startSessionServices();
      try {
        const image = `${services.info.registry}/busybox:latest`;
        const capsule: Engine = { name: 'capsule', env: services.daemon.cliEnv() };
        info = await runSeries(capsule, reference, image, services.info.daemonLogPath, rows, raw);
      } finally {
        await services.stop();
      }
    }
    process.stdout.write(
      [
        `Measured ${new Date().toISOString()} on ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}; capsule acceleration: ${info.stdout.trim() || 'n/a'}`,
        '',
        '| what | Capsule | reference dockerd | ratio |',
        '|---|---|---|---|',
        ...rows,
        '',
        ...raw,
        '',
      ].join('\n'),
    );
  } finally {
    spawnSync(REFERENCE_TOOL, ['stop', REFERENCE_DIR]);
  }
}

async function runSeries(
  capsule: Engine,
  reference: Engine,
  image: string,
  daemonLogPath: string,
  rows: string[],
  raw: string[],
): Promise<{ stdout: string }> {
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
  const boots = await agentReadyTimes(daemonLogPath);
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
  raw.push(
    `raw capsule run ms: ${runCapsule.map((t) => t.toFixed(0)).join(' ')}`,
    `raw capsule run ms, warm VM ready: ${runCapsuleWarm.map((t) => t.toFixed(0)).join(' ')}`,
    `raw reference run ms: ${runReference.map((t) => t.toFixed(0)).join(' ')}`,
    `raw boot-to-agent-ready ms: ${boots.map((t) => t.toFixed(0)).join(' ')}`,
  );
  return info;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
