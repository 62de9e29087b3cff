import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_CONFIG, resolveConfig } from './config';

describe('daemon config', () => {
  it('has the documented defaults', () => {
    const c = resolveConfig({}, {});
    assert.equal(c.socketPath, '/run/capsule/docker.sock');
    assert.equal(c.dataRoot, '/var/lib/capsule');
    assert.equal(c.execRoot, '/run/capsule/vm');
    assert.equal(c.guestAssetsDir, '/var/cache/capsule/guest');
    assert.equal(c.accel, 'auto');
    assert.deepEqual(c, { ...DEFAULT_CONFIG, insecureRegistries: [] });
  });

  it('env overrides defaults, flags override env', () => {
    const env = {
      CAPSULE_SOCKET: '/e.sock',
      CAPSULE_ACCEL: 'tcg',
      CAPSULE_INSECURE_REGISTRIES: 'a:5000, b:5000',
    };
    const fromEnv = resolveConfig({}, env);
    assert.equal(fromEnv.socketPath, '/e.sock');
    assert.equal(fromEnv.accel, 'tcg');
    assert.deepEqual(fromEnv.insecureRegistries, ['a:5000', 'b:5000']);
    const fromFlags = resolveConfig({ socket: '/f.sock', accel: 'kvm', insecureRegistry: ['c:1'] }, env);
    assert.equal(fromFlags.socketPath, '/f.sock');
    assert.equal(fromFlags.accel, 'kvm');
    assert.deepEqual(fromFlags.insecureRegistries, ['c:1']);
  });

  it('rejects bad values', () => {
    assert.throws(() => resolveConfig({ accel: 'hvf' }), /accel must be auto, kvm or tcg/);
    assert.throws(() => resolveConfig({ logLevel: 'loud' }), /unknown log level/);
    assert.throws(() => resolveConfig({ dataRoot: '' }), /must not be empty/);
  });
});
