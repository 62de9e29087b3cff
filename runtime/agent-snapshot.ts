/**
 * Builds the guest agent's V8 startup snapshot in a VM. guest/assets/build.sh runs it (compiled,
 * dist/runtime/agent-snapshot.js) after making the agent disk, then puts the blob on the disk as
 * agent.tcg.blob:
 *
 *   node dist/runtime/agent-snapshot.js KERNEL INITRD AGENT_DISK KERNEL_RELEASE OUT
 *
 * Why in a VM: node accepts a snapshot only on a CPU with the features V8 saw when it was built (its
 * tag mixes V8's version, its flags and the CPU features), and QEMU's TCG CPU model is not the
 * host's (this host's CPU has CET shadow stacks, which V8 counts and no flag turns off). So /init
 * builds the blob in `capsule.build-snapshot=1` mode (guest/assets/init.sh) in a VM booted by bootVm,
 * the same machine and CPU model as every sandbox, and writes it to the VM's shared dir. Needs root
 * (virtiofsd).
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SystemError, messageOf } from '../common/errdefs';
import { createRootLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import type { GuestAssets } from './guest-assets';
import { bootVm, consoleTail, type Vm } from './qemu/vm';

/** A build takes 10–20 s under TCG here; a boot that hangs is killed after this long. */
const DEADLINE_MS = 240_000;
const OK_MARKER = 'CAPSULE-SNAPSHOT-OK';

/** One build in one VM; writes the blob to `out`. Rejects with the console's tail on failure. */
export async function buildAgentSnapshotOnce(assets: GuestAssets, out: string): Promise<void> {
  const log = createRootLogger({ level: 'warn' });
  const supervisor = new ProcessSupervisor(log);
  const runDir = mkdtempSync(path.join(os.tmpdir(), 'capsule-snap-'));
  const sharedDir = path.join(runDir, 'shared');
  mkdirSync(sharedDir, { mode: 0o700 });
  let vm: Vm | undefined;
  try {
    vm = await bootVm(supervisor, log, {
      runDir,
      sharedDir,
      assets,
      accel: 'tcg',
      memoryMiB: 512,
      vcpus: 1,
      kernelArgs: ['capsule.build-snapshot=1'],
    });
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      vm.exited.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), DEADLINE_MS))),
    ]);
    clearTimeout(timer);
    const text = await consoleTail(vm, 1 << 20);
    const blob = path.join(sharedDir, 'agent.blob');
    if (!text.includes(OK_MARKER) || !existsSync(blob)) {
      const why = timedOut ? `no result within ${DEADLINE_MS} ms` : 'the build failed';
      throw new SystemError(`agent snapshot: ${why}; console tail:\n${text.slice(-3000)}`);
    }
    copyFileSync(blob, out);
  } finally {
    await vm?.stop();
    await supervisor.terminateAll(1000);
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** Builds the snapshot, booting again when a boot fails (TCG boots can hang now and then). */
export async function buildAgentSnapshot(assets: GuestAssets, out: string, attempts = 3): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await buildAgentSnapshotOnce(assets, out);
      return;
    } catch (err) {
      if (attempt >= attempts) throw err;
      process.stderr.write(`guest-assets: ${messageOf(err).split('\n')[0]}; trying again\n`);
    }
  }
}

if (require.main === module) {
  const [kernelPath, initrdPath, agentDiskPath, kernelRelease, out] = process.argv.slice(2);
  if (!kernelPath || !initrdPath || !agentDiskPath || !kernelRelease || !out) {
    process.stderr.write('usage: agent-snapshot.js KERNEL INITRD AGENT_DISK KERNEL_RELEASE OUT\n');
    process.exit(2);
  }
  const started = Date.now();
  buildAgentSnapshot({ kernelPath, initrdPath, agentDiskPath, kernelRelease }, out).then(
    () => {
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      process.stdout.write(
        `guest-assets: agent snapshot built in ${seconds} s (${statSync(out).size} bytes)\n`,
      );
    },
    (err: unknown) => {
      process.stderr.write(`guest-assets: ${messageOf(err)}\n`);
      process.exit(1);
    },
  );
}
