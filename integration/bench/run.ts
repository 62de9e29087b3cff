/**
 * Benchmarks (not tests): Capsule and the reference dockerd measured side by side in one run,
 * against the same private registry and the same busybox image. Prints a Markdown table for
 * docs/performance.md.
 *
 *   npm run bench            (needs root; starts a registry, a capsuled and the reference dockerd)
 *
 * CAPSULE_BENCH_SERIES (default all) picks the series, a comma-separated list of run, pull, exec,
 * logs (or all): `run` times `docker run --rm`, `pull` times `docker pull` of a multi-layer image of
 * tens of MiB (CAPSULE_BENCH_PULL_RUNS, default 5) on both engines, removing the image between runs,
 * `exec` times `docker exec <running> true` (CAPSULE_BENCH_EXEC_RUNS, default 20), `logs` times a
 * container writing 100 MiB to stdout and `docker logs` reading it back (CAPSULE_BENCH_LOG_RUNS,
 * default 3; CAPSULE_BENCH_LOG_MIB, default 100), failing if a single byte is missing or wrong.
 */
import { spawn, spawnSync } from 'node:child_process';
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
const EXEC_RUNS = Number(process.env.CAPSULE_BENCH_EXEC_RUNS ?? 20);
const LOG_RUNS = Number(process.env.CAPSULE_BENCH_LOG_RUNS ?? 3);
const ALL_SERIES = ['pull', 'run', 'exec', 'logs'] as const;
type Series = (typeof ALL_SERIES)[number];
const SERIES: ReadonlySet<Series> = parseSeries(process.env.CAPSULE_BENCH_SERIES ?? 'all');

function parseSeries(spec: string): Set<Series> {
  const picked = new Set<Series>();
  for (const name of spec.split(',').map((s) => s.trim())) {
    if (name === 'all') ALL_SERIES.forEach((s) => picked.add(s));
    else if ((ALL_SERIES as readonly string[]).includes(name)) picked.add(name as Series);
    else
      throw new Error(
        `CAPSULE_BENCH_SERIES: unknown series ${JSON.stringify(name)} (${ALL_SERIES.join(', ')}, all)`,
      );
  }
  return picked;
}

interface Engine {
  name: string;
  env: NodeJS.ProcessEnv;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
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
    if (SERIES.has('pull')) {
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
    if (SERIES.has('run') || SERIES.has('exec') || SERIES.has('logs')) {
      const services = await startSessionServices();
      try {
        const image = `${services.info.registry}/busybox:latest`;
        const capsule: Engine = { name: 'capsule', env: services.daemon.cliEnv() };
        for (const engine of [capsule, reference]) {
          const pull = await runCli(engine.env, ['pull', '-q', image], { timeoutMs: 300_000 });
          if (pull.code !== 0) throw new Error(`${engine.name}: pull failed: ${pull.stderr}`);
        }
        info = await runCli(capsule.env, ['info', '--format', '{{json .DriverStatus}}']);
        if (SERIES.has('run'))
          await runSeries(capsule, reference, image, services.info.daemonLogPath, rows, raw);
        const daemon = { logPath: services.info.daemonLogPath, pid: services.daemon.pid() };
        if (SERIES.has('exec')) await execSeries(capsule, reference, image, daemon.logPath, rows, raw);
        if (SERIES.has('logs')) await logsSeries(capsule, reference, image, daemon, rows, raw);
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
): Promise<void> {
  for (const engine of [capsule, reference]) {
    await timeCommand(engine, ['run', '--rm', image, 'true'], 1); // warm-up
  }
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
}

async function mustCli(engine: Engine, args: string[], timeoutMs = 300_000): Promise<string> {
  const r = await runCli(engine.env, args, { timeoutMs });
  if (r.code !== 0)
    throw new Error(`${engine.name}: docker ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** Median, p90 and min of a series, for a table cell. */
function spread(times: number[]): string {
  return `${median(times).toFixed(0)} ms (p90 ${percentile(times, 90).toFixed(0)}, min ${Math.min(...times).toFixed(0)})`;
}

/**
 * `docker exec <running> true` through the real CLI, the container started once beforehand on
 * each engine. Runs alternate between the engines so load from other work falls on both alike.
 */
async function execSeries(
  capsule: Engine,
  reference: Engine,
  image: string,
  daemonLogPath: string,
  rows: string[],
  raw: string[],
) {
  const engines = [capsule, reference];
  const ids: string[] = [];
  try {
    const poolReady = await poolReadyCount(daemonLogPath);
    for (const engine of engines) {
      ids.push((await mustCli(engine, ['run', '-d', image, 'sleep', '3600'])).trim());
    }
    // Starting the container took the pooled VM; its replacement boots under TCG (a core for
    // ≈ 10 s). Timing execs meanwhile would measure that boot's load, not exec.
    await waitForPoolRefill(daemonLogPath, poolReady);
    for (const [n, engine] of engines.entries()) await timeCommand(engine, ['exec', ids[n] ?? '', 'true'], 2); // warm-up
    const times: number[][] = engines.map(() => []);
    for (let i = 0; i < EXEC_RUNS; i++) {
      for (const [n, engine] of engines.entries()) {
        times[n]?.push(...(await timeCommand(engine, ['exec', ids[n] ?? '', 'true'], 1)));
      }
    }
    const [tc = [], tr = []] = times;
    rows.push(
      `| \`docker exec <running busybox> true\`, median of ${EXEC_RUNS} | ${spread(tc)} | ${spread(tr)} | ${(median(tc) / median(tr)).toFixed(1)}× |`,
    );
    raw.push(
      `raw capsule exec ms: ${tc.map((t) => t.toFixed(0)).join(' ')}`,
      `raw reference exec ms: ${tr.map((t) => t.toFixed(0)).join(' ')}`,
    );
    progress(rows.at(-1) ?? '');
  } finally {
    for (const [n, engine] of engines.entries()) {
      if (ids[n]) await runCli(engine.env, ['rm', '-f', ids[n] ?? ''], { timeoutMs: 120_000 });
    }
  }
}

/** CAPSULE_BENCH_LOG_MIB (default 100) shortens the series for a smoke run; whole MiB, so even. */
const LOG_MIB = Number(process.env.CAPSULE_BENCH_LOG_MIB ?? 100);
if (!Number.isInteger(LOG_MIB) || LOG_MIB <= 0)
  throw new Error('CAPSULE_BENCH_LOG_MIB: a whole number of MiB');
const LOG_BYTES = LOG_MIB * 1024 * 1024;
/** What `yes` writes, "y\n" repeated, one byte longer than PATTERN_SPAN so either phase fits. */
const PATTERN_SPAN = 1 << 20;
const PATTERN = Buffer.from('y\n'.repeat(PATTERN_SPAN / 2 + 1));

/** Progress on stderr, so that a long run shows its figures as they come. */
function progress(line: string): void {
  process.stderr.write(`bench ${new Date().toISOString()}: ${line}\n`);
}

async function poolReadyCount(daemonLogPath: string): Promise<number> {
  const text = await fs.readFile(daemonLogPath, 'utf8').catch(() => '');
  return text.split('warm pool: VM ready').length - 1;
}

/** Waits (up to 90 s) until the daemon logged one more "warm pool: VM ready" than `before`. */
async function waitForPoolRefill(daemonLogPath: string, before: number): Promise<void> {
  const deadline = Date.now() + 90_000;
  while ((await poolReadyCount(daemonLogPath)) <= before) {
    if (Date.now() > deadline) throw new Error('the warm pool did not refill within 90 s');
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** Peak resident memory of a process (VmHWM), in MiB, or undefined if it cannot be read. */
async function peakRssMiB(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : undefined;
}

async function referenceDaemonPid(): Promise<number | undefined> {
  const text = await fs.readFile(`${REFERENCE_DIR}/dockerd.pid`, 'utf8').catch(() => '');
  return text.trim() ? Number(text.trim()) : undefined;
}

/**
 * Runs `docker logs ID` and reads its stdout to the end, discarding it but checking every byte:
 * `yes` writes "y\n" over and over, so even offsets must be 'y' and odd ones '\n'. Returns the
 * byte count and an error text for the first wrong byte (or stderr output), if any.
 */
function readLogs(engine: Engine, id: string): Promise<{ bytes: number; ms: number; problem?: string }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn('docker', ['logs', id], { env: engine.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let bytes = 0;
    let problem: string | undefined;
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      // Compared against the pattern with memcmp (Buffer.equals), not byte by byte in JS: this
      // process shares the 2 cores with the CLI and the daemon being measured.
      for (let at = 0; problem === undefined && at < chunk.length; at += PATTERN_SPAN) {
        const part = chunk.subarray(at, at + PATTERN_SPAN);
        const phase = (bytes + at) % 2;
        if (!part.equals(PATTERN.subarray(phase, phase + part.length))) {
          const i = part.findIndex((c, k) => c !== PATTERN[phase + k]);
          problem = `unexpected byte 0x${(part[i] ?? 0).toString(16)} at offset ${bytes + at + i}`;
        }
      }
      bytes += chunk.length;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 1_800_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (code !== 0) problem ??= `docker logs exited ${code}: ${stderr}`;
      else if (stderr) problem ??= `docker logs wrote to stderr: ${stderr.slice(0, 200)}`;
      resolve({ bytes, ms, problem });
    });
  });
}

/**
 * Log throughput: a container writes 100 MiB ("y\n" lines) to stdout with nobody attached; we time
 * `docker run -d` to `docker wait` returning (the log writer's pace), then `docker logs` read to
 * the end. Fails loudly if the exit code is not 0 or the logs hold anything but the 100 MiB written.
 */
async function logsSeries(
  capsule: Engine,
  reference: Engine,
  image: string,
  daemon: { logPath: string; pid: number | undefined },
  rows: string[],
  raw: string[],
) {
  const engines = [capsule, reference];
  const rssBefore = [await peakRssMiB(daemon.pid), await peakRssMiB(await referenceDaemonPid())];
  const exitMs: number[][] = engines.map(() => []);
  const readMs: number[][] = engines.map(() => []);
  for (let i = 0; i < LOG_RUNS; i++) {
    for (const [n, engine] of engines.entries()) {
      let id = '';
      try {
        const start = process.hrtime.bigint();
        id = (await mustCli(engine, ['run', '-d', image, 'sh', '-c', `yes | head -c ${LOG_BYTES}`])).trim();
        const code = (await mustCli(engine, ['wait', id], 1_800_000)).trim();
        exitMs[n]?.push(Number(process.hrtime.bigint() - start) / 1e6);
        if (code !== '0') throw new Error(`${engine.name}: log writer container exited ${code}`);
        progress(`${engine.name}: run ${i + 1} exited after ${exitMs[n]?.at(-1)?.toFixed(0)} ms`);
        const read = await readLogs(engine, id);
        if (read.bytes !== LOG_BYTES || read.problem) {
          throw new Error(
            `${engine.name}: docker logs returned ${read.bytes} of ${LOG_BYTES} bytes${read.problem ? `: ${read.problem}` : ''}`,
          );
        }
        readMs[n]?.push(read.ms);
        progress(`${engine.name}: docker logs read ${read.bytes} bytes in ${read.ms.toFixed(0)} ms`);
      } finally {
        if (id) await runCli(engine.env, ['rm', '-f', id], { timeoutMs: 300_000 });
      }
    }
  }
  const mib = LOG_BYTES / 1048576;
  const rate = (ms: number): string => `${(mib / (ms / 1000)).toFixed(2)} MiB/s`;
  const [ec = [], er = []] = exitMs;
  const [rc = [], rr = []] = readMs;
  rows.push(
    `| \`docker run -d busybox sh -c 'yes \\| head -c ${LOG_BYTES}'\` to \`docker wait\` returning, median of ${LOG_RUNS} | ${median(ec).toFixed(0)} ms (${rate(median(ec))}) | ${median(er).toFixed(0)} ms (${rate(median(er))}) | ${(median(ec) / median(er)).toFixed(2)}× time (${((median(er) / median(ec)) * 100).toFixed(0)} % of dockerd's rate) |`,
    `| \`docker logs\` of those ${mib} MiB read to the end (byte count and content checked), median of ${LOG_RUNS} | ${rate(median(rc))} (${median(rc).toFixed(0)} ms) | ${rate(median(rr))} (${median(rr).toFixed(0)} ms) | ${((median(rr) / median(rc)) * 100).toFixed(0)} % of dockerd's rate |`,
  );
  raw.push(
    `raw capsule run-to-exit ms: ${ec.map((t) => t.toFixed(0)).join(' ')}`,
    `raw reference run-to-exit ms: ${er.map((t) => t.toFixed(0)).join(' ')}`,
    `raw capsule docker logs ms: ${rc.map((t) => t.toFixed(0)).join(' ')}`,
    `raw reference docker logs ms: ${rr.map((t) => t.toFixed(0)).join(' ')}`,
    `daemon peak RSS (VmHWM) before/after the logs series, MiB: capsuled ${rssBefore[0]?.toFixed(0)}/${(await peakRssMiB(daemon.pid))?.toFixed(0)}, dockerd ${rssBefore[1]?.toFixed(0)}/${(await peakRssMiB(await referenceDaemonPid()))?.toFixed(0)}`,
  );
  progress(rows.at(-2) ?? '');
  progress(rows.at(-1) ?? '');
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
