import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DetachScanner, parseDetachKeys } from './containers';

describe('detach keys', () => {
  it('parses dockerd detach key specs', () => {
    assert.deepEqual([...parseDetachKeys(undefined)], [0x10, 0x11]);
    assert.deepEqual([...parseDetachKeys('ctrl-a,x')], [0x01, 0x78]);
    assert.deepEqual([...parseDetachKeys('ctrl-@,ctrl-[')], [0x00, 0x1b]);
    assert.throws(() => parseDetachKeys('ctrl-1'), /Invalid detach keys \(ctrl-1\) provided/);
  });

  it('passes bytes through, holds a partial sequence, detects a complete one across chunks', () => {
    const s = new DetachScanner(Buffer.from([0x10, 0x11]));
    assert.deepEqual(s.push(Buffer.from('ab')), { forward: Buffer.from('ab'), detach: false });
    assert.deepEqual(s.push(Buffer.from([0x63, 0x10])), { forward: Buffer.from('c'), detach: false });
    assert.deepEqual(s.push(Buffer.from([0x64])), { forward: Buffer.from([0x10, 0x64]), detach: false });
    assert.deepEqual(s.push(Buffer.from([0x10])), { forward: Buffer.alloc(0), detach: false });
    assert.deepEqual(s.push(Buffer.from([0x11, 0x65])), { forward: Buffer.alloc(0), detach: true });
  });
});
