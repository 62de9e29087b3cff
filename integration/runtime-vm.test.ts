/**
 * Real VMs from the built guest assets (needs root, QEMU and `guest/assets/build.sh` having run;
 * missing assets fail this suite, they never skip it): the boot reaches /init, the agent disk and
 * virtiofs get mounted and the agent starts; stop() leaves no process, socket or pid file; the
 * accelerator probe boot prints its marker under TCG. Prints boot timings (docs/guest.md):
 *
 *   CAPSULE_BOOT_SAMPLES=5 node --test --test-reporter=spec dist/integration/runtime-vm.test.js
 *
 * CAPSULE_EXPECT_ACCEL=tcg|kvm additionally asserts what `auto` picks on this host.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { PROBE_MARKER, chooseAccel, probeBoot } from '../runtime/accel';
import { DEFAULT_GUEST_DIR, type GuestAssets, loadGuestAssets } from '../runtime/guest-assets';
import { type Vm, bootVm, consoleTail } from '../runtime/qemu/vm';

const GUEST_DIR = process.env.CAPSULE_GUEST_DIR ?? DEFAULT_GUEST_DIR;
const SAMPLES = Number(process.env.CAPSULE_BOOT_SAMPLES ?? '3');
const log = createSilentLogger();

interface BootTimes {
  /** Wall ms from bootVm() to the console line, or undefined when it never came. */
  init?: number;
  agentStart?: number;
  agentOutput?: number;
  /** Guest uptime (s) /init printed at those points, and the agent's when it began serving. */
  guestInit?: number;
  guestAgentStart?: number;
  guestAgentServing?: number;
  console: string;
}

const INIT_RE = /capsule-init: started, kernel (\S+), uptime ([\d.]+)s/;
const AGENT_START_RE = /capsule-init: starting agent, uptime ([\d.]+)s/;
const AGENT_SERVING_RE = /capsule-agent: \[([\d.]+)\] serving/;

/** Polls the console until the agent printed something (or the deadlines pass). */
async function watchBoot(
  vm: Vm,
  started: number,
  initDeadlineMs: number,
  agentDeadlineMs: number,
): Promise<BootTimes> {
  const times: BootTimes = { console: '' };
  for (;;) {
    const text = await consoleTail(vm, 1 << 20);
    times.console = text;
    const now = Date.now() - started;
    const init = INIT_RE.exec(text);
    if (init && times.init === undefined) {
      times.init = now;
      times.guestInit = Number(init[2]);
    }
    const agent = AGENT_START_RE.exec(text);
    if (agent && times.agentStart === undefined) {
      times.agentStart = now;
      times.guestAgentStart = Number(agent[1]);
    }
    if (agent) {
      // The first line after "starting agent": the stub's "agent stub" or the agent's own.
      const after = text.slice(agent.index + agent[0].length).trim();
      if (after !== '' && !after.startsWith('Warning:')) {
        times.agentOutput ??= now;
        const serving = AGENT_SERVING_RE.exec(text);
        // The real agent's first line is `serving`; a stub's is anything.
        if (serving || !after.startsWith('capsule-agent:')) {
          if (serving) times.guestAgentServing = Number(serving[1]);
          return times;
        }
      }
    }
    if (/capsule-init: FATAL/.test(text)) return times;
    if (times.init === undefined && now > initDeadlineMs) return times;
    if (now > agentDeadlineMs) return times;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? NaN;
}

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  return port;
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

describe('guest VM (real QEMU, TCG)', () => {
  let assets: GuestAssets;
  const supervisor = new ProcessSupervisor(log);
  const runDirs: string[] = [];

  before(async () => {
    assert.equal(process.getuid?.(), 0, 'these tests need root (virtiofsd, /run/capsule)');
    // Throws "guest assets missing in …: run scripts/setup.sh": a failure, not a skip.
    assets = await loadGuestAssets(GUEST_DIR);
  });

  after(async () => {
    await supervisor.terminateAll(1000);
    for (const dir of runDirs) rmSync(dir, { recursive: true, force: true });
  });

  async function bootOnce(hostname: string): Promise<{ vm: Vm; times: BootTimes; runDir: string }> {
    const runDir = path.join('/run/capsule/vm', randomBytes(6).toString('hex'));
    runDirs.push(runDir);
    const sharedDir = path.join(runDir, 'shared');
    mkdirSync(sharedDir, { recursive: true });
    writeFileSync(path.join(sharedDir, 'hello.txt'), 'hello from the host\n');
    const started = Date.now();
    const vm = await bootVm(supervisor, log, {
      runDir,
      sharedDir,
      assets,
      accel: 'tcg',
      memoryMiB: 256,
      vcpus: 1,
      hostname,
      hostForwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: await freePort(), guestPort: 80 }],
    });
    const times = await watchBoot(vm, started, 30_000, 90_000);
    return { vm, times, runDir };
  }

  it('boots to /init, mounts the agent disk and virtiofs, starts the agent, and stop() leaves nothing', async (t) => {
    const samples: BootTimes[] = [];
    let attempts = 0;
    while (samples.length < SAMPLES && attempts < SAMPLES + 3) {
      attempts++;
      const { vm, times, runDir } = await bootOnce(`vm-test-${attempts}`);
      await vm.stop();
      if (times.init === undefined) {
        // A hang before /init (the old TSC calibration hang): the sandbox retries; so do we.
        t.diagnostic(
          `boot ${attempts}: no /init within 30 s, retrying; console tail: ${times.console.slice(-300)}`,
        );
        continue;
      }
      const text = times.console;
      assert.equal(INIT_RE.exec(text)?.[1], assets.kernelRelease, text);
      assert.match(text, /capsule-init: modules loaded/);
      assert.match(text, /capsule-init: agent disk mounted \(\/dev\/vd[a-z]\)/);
      assert.match(text, /capsule-init: virtiofs mounted/);
      assert.match(text, /capsule-init: eth0 10\.0\.2\.15\/24 via 10\.0\.2\.2/);
      assert.match(text, /capsule-init: starting agent/);
      assert.doesNotMatch(text, /FATAL/);
      assert.ok(times.agentOutput !== undefined, `the agent printed nothing: ${text.slice(-500)}`);

      // Nothing left: both processes reaped, sockets and virtiofsd's pid file removed.
      assert.ok(gone(vm.pid), 'qemu still running');
      assert.ok(gone(vm.virtiofsdPid), 'virtiofsd still running');
      assert.deepEqual(
        readdirSync(runDir).filter((f) => f.endsWith('.sock')),
        [],
      );
      const pidFile = path.join(
        '/run/virtiofsd',
        path.join(runDir, 'virtiofsd.sock').replaceAll('/', '.') + '.pid',
      );
      assert.ok(!existsSync(pidFile), `${pidFile} left behind`);
      assert.equal(supervisor.running().length, 0);
      samples.push(times);
      t.diagnostic(
        `boot ${attempts}: /init at ${times.init} ms wall (guest ${times.guestInit} s), agent start ` +
          `${times.agentStart} ms (guest ${times.guestAgentStart} s), agent's first output ${times.agentOutput} ms` +
          ` (guest ${times.guestAgentServing ?? '?'} s serving)`,
      );
    }
    assert.equal(samples.length, SAMPLES, `only ${samples.length} of ${attempts} boots reached /init`);
    const pick = (
      k: 'init' | 'agentStart' | 'agentOutput' | 'guestInit' | 'guestAgentStart' | 'guestAgentServing',
    ): number => median(samples.map((s) => s[k] ?? NaN));
    t.diagnostic(
      `median of ${SAMPLES} (load ${os.loadavg()[0]?.toFixed(2)}): /init ${pick('init')} ms wall ` +
        `(guest ${pick('guestInit')} s), agent start ${pick('agentStart')} ms (guest ${pick('guestAgentStart')} s), ` +
        `agent's first output ${pick('agentOutput')} ms (guest ${pick('guestAgentServing')} s serving); ` +
        `${attempts - SAMPLES} retried`,
    );
  });

  it('probe boot under TCG prints the marker with the kernel release and leaves nothing', async (t) => {
    let result = await probeBoot(supervisor, assets, 'tcg', { timeoutMs: 30_000 });
    if (!result.ok) {
      t.diagnostic(`probe attempt 1 failed (${result.detail}), retrying`);
      result = await probeBoot(supervisor, assets, 'tcg', { timeoutMs: 30_000 });
    }
    assert.ok(result.ok, `${result.detail}\n${result.console.slice(-1000)}`);
    assert.equal(result.detail, `${PROBE_MARKER} ${assets.kernelRelease}`);
    t.diagnostic(`TCG probe boot: marker after ${result.elapsedMs} ms`);
    assert.equal(supervisor.running().length, 0);
  });

  it('auto picks an accelerator that boots, and caches the verdict', async (t) => {
    const stateDir = mkdtempSync(path.join(os.tmpdir(), 'capsule-accel-'));
    try {
      const started = Date.now();
      const accel = await chooseAccel('auto', { supervisor, log, assets, stateDir });
      t.diagnostic(`auto chose ${accel} in ${Date.now() - started} ms`);
      if (process.env.CAPSULE_EXPECT_ACCEL) assert.equal(accel, process.env.CAPSULE_EXPECT_ACCEL);
      if (accel === 'kvm') {
        assert.ok((await probeBoot(supervisor, assets, 'kvm')).ok);
      }
      const again = Date.now();
      assert.equal(await chooseAccel('auto', { supervisor, log, assets, stateDir }), accel);
      assert.ok(Date.now() - again < 2000, 'second choice should come from the cache');
      assert.equal(supervisor.running().length, 0);
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
