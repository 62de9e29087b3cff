import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SystemError } from '../common/errdefs';
import { loadGuestAssets } from './guest-assets';

describe('loadGuestAssets', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'guest-assets-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads the manifest and resolves relative names against its dir', async () => {
    for (const f of ['vmlinuz', 'initrd.img', 'agent.img']) writeFileSync(path.join(dir, f), 'x');
    writeFileSync(
      path.join(dir, 'manifest.json'),
      JSON.stringify({
        kernelRelease: '6.1.0-57-cloud-amd64',
        kernel: path.join(dir, 'vmlinuz'),
        initrd: 'initrd.img',
        agentDisk: 'agent.img',
        inputsHash: 'abc',
      }),
    );
    assert.deepEqual(await loadGuestAssets(dir), {
      kernelPath: path.join(dir, 'vmlinuz'),
      initrdPath: path.join(dir, 'initrd.img'),
      agentDiskPath: path.join(dir, 'agent.img'),
      kernelRelease: '6.1.0-57-cloud-amd64',
      inputsHash: 'abc',
    });
  });

  it('says to run setup when the manifest is missing', async () => {
    const empty = path.join(dir, 'empty');
    await assert.rejects(
      loadGuestAssets(empty),
      (err: unknown) =>
        err instanceof SystemError &&
        err.message.startsWith(`guest assets missing in ${empty}: run scripts/setup.sh`),
    );
  });

  it('says so when a named file is missing or the manifest is incomplete', async () => {
    const sub = mkdtempSync(path.join(dir, 'partial-'));
    writeFileSync(
      path.join(sub, 'manifest.json'),
      JSON.stringify({ kernelRelease: 'r', kernel: 'vmlinuz', initrd: 'i', agentDisk: 'a', inputsHash: 'h' }),
    );
    await assert.rejects(loadGuestAssets(sub), /guest assets missing .*vmlinuz/);
    writeFileSync(path.join(sub, 'manifest.json'), JSON.stringify({ kernel: 'vmlinuz' }));
    await assert.rejects(loadGuestAssets(sub), /lacks a field/);
    writeFileSync(path.join(sub, 'manifest.json'), '{');
    await assert.rejects(loadGuestAssets(sub), /not JSON/);
  });
});
