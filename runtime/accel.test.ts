import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { UnavailableError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { ProcessSupervisor } from '../common/processes';
import { ACCEL_CACHE_FILE, type AccelDeps, type ProbeResult, chooseAccel } from './accel';
import type { Accel } from './types';

describe('chooseAccel', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'accel-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function deps(
    stateDir: string,
    opts: { usable: boolean; version?: string; probe?: (a: Accel) => Promise<ProbeResult> },
  ): AccelDeps & { probes: Accel[] } {
    const log = createSilentLogger();
    const probes: Accel[] = [];
    return {
      supervisor: new ProcessSupervisor(log),
      log,
      assets: { kernelPath: '/k', initrdPath: '/i', agentDiskPath: '/a', kernelRelease: '6.1.0-test' },
      stateDir,
      kvmUsable: () => Promise.resolve(opts.usable),
      qemuVersion: () => Promise.resolve(opts.version ?? 'QEMU emulator version 7.2.22'),
      probe: (accel) => {
        probes.push(accel);
        return opts.probe
          ? opts.probe(accel)
          : Promise.resolve({ ok: true, detail: 'CAPSULE-PROBE-OK 6.1.0-test', elapsedMs: 800, console: '' });
      },
      probes,
    };
  }

  it('uses TCG without probing when /dev/kvm cannot be opened', async () => {
    const d = deps(path.join(dir, 'a'), { usable: false });
    assert.equal(await chooseAccel('auto', d), 'tcg');
    assert.deepEqual(d.probes, []);
  });

  it('obeys an explicit setting, refusing kvm without /dev/kvm', async () => {
    assert.equal(await chooseAccel('tcg', deps(path.join(dir, 'b'), { usable: true })), 'tcg');
    assert.equal(await chooseAccel('kvm', deps(path.join(dir, 'b'), { usable: true })), 'kvm');
    await assert.rejects(chooseAccel('kvm', deps(path.join(dir, 'b'), { usable: false })), UnavailableError);
  });

  it('probes once, caches the verdict, and probes again when QEMU changes', async () => {
    const state = path.join(dir, 'c');
    const first = deps(state, { usable: true });
    assert.equal(await chooseAccel('auto', first), 'kvm');
    assert.deepEqual(first.probes, ['kvm']);
    assert.equal(JSON.parse(readFileSync(path.join(state, ACCEL_CACHE_FILE), 'utf8')).accel, 'kvm');

    const second = deps(state, { usable: true });
    assert.equal(await chooseAccel('auto', second), 'kvm');
    assert.deepEqual(second.probes, []);

    const upgraded = deps(state, {
      usable: true,
      version: 'QEMU emulator version 8.0.0',
      probe: () =>
        Promise.resolve({ ok: false, detail: 'no marker within 10000 ms', elapsedMs: 10000, console: '' }),
    });
    assert.equal(await chooseAccel('auto', upgraded), 'tcg');
    assert.deepEqual(upgraded.probes, ['kvm']);
  });

  it('falls back to TCG, uncached, when the probe cannot run', async () => {
    const state = path.join(dir, 'd');
    const d = deps(state, { usable: true, probe: () => Promise.reject(new Error('ENOSPC')) });
    assert.equal(await chooseAccel('auto', d), 'tcg');
    assert.ok(!existsSync(path.join(state, ACCEL_CACHE_FILE)));
  });
});
