import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_PATH, commandOf, mergeImageConfig, processEnv } from './merge';
import { containerConfig } from './testing/fixture';
import type { ContainerConfig } from './types';

// The values these tests were written against (image 'img', nothing attached), over the fixture's defaults.
const config = (over: Partial<ContainerConfig> = {}): ContainerConfig =>
  containerConfig({ attachStdout: false, attachStderr: false, image: 'img', ...over });

const image = {
  Entrypoint: ['/entry'],
  Cmd: ['default'],
  Env: ['PATH=/img/bin', 'A=image', 'B=b'],
  User: 'nobody',
  WorkingDir: '/w',
  Labels: { l: 'image', m: 'm' },
  ExposedPorts: { '80/tcp': {} },
  StopSignal: 'SIGQUIT',
};

describe('Entrypoint/Cmd merge (Docker semantics)', () => {
  it('no user entrypoint or cmd: both from the image', () => {
    const m = mergeImageConfig(config(), image);
    assert.deepEqual(commandOf(m), { path: '/entry', args: ['default'] });
  });

  it('user cmd only: image entrypoint + user cmd', () => {
    const m = mergeImageConfig(config({ cmd: ['mine'] }), image);
    assert.deepEqual(commandOf(m), { path: '/entry', args: ['mine'] });
  });

  it('user entrypoint: image cmd is dropped', () => {
    const m = mergeImageConfig(config({ entrypoint: ['sh'] }), image);
    assert.deepEqual(m.cmd, null);
    assert.deepEqual(commandOf(m), { path: 'sh', args: [] });
  });

  it('empty user entrypoint ([]) clears the image entrypoint but keeps the image cmd', () => {
    const m = mergeImageConfig(config({ entrypoint: [], cmd: [] }), image);
    assert.deepEqual(m.entrypoint, []);
    assert.deepEqual(m.cmd, ['default']);
    assert.deepEqual(commandOf(m), { path: 'default', args: [] });
  });

  it('nothing to run is 400 "No command specified"', () => {
    assert.throws(() => commandOf(mergeImageConfig(config(), {})), /No command specified/);
  });
});

describe('other fields', () => {
  it('env: user entries first, image entries the user did not set', () => {
    const m = mergeImageConfig(config({ env: ['A=user', 'C=c'] }), image);
    assert.deepEqual(m.env, ['A=user', 'C=c', 'PATH=/img/bin', 'B=b']);
  });

  it('user, workdir, stop signal, labels and ports from the image unless set', () => {
    const m = mergeImageConfig(config({ labels: { l: 'user' }, workingDir: '/mine' }), image);
    assert.equal(m.user, 'nobody');
    assert.equal(m.workingDir, '/mine');
    assert.equal(m.stopSignal, 'SIGQUIT');
    assert.deepEqual(m.labels, { l: 'user', m: 'm' });
    assert.deepEqual(m.exposedPorts, { '80/tcp': {} });
  });

  it('process env: default PATH and HOSTNAME, TERM for a tty, config env wins', () => {
    assert.deepEqual(processEnv(config({ hostname: 'h1' })), [`PATH=${DEFAULT_PATH}`, 'HOSTNAME=h1']);
    assert.deepEqual(processEnv(config({ hostname: 'h1', tty: true, env: ['PATH=/bin', 'X=1'] })), [
      'PATH=/bin',
      'HOSTNAME=h1',
      'TERM=xterm',
      'X=1',
    ]);
  });
});
