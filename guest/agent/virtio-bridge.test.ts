import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseHello, SESSION_HELLO } from './virtio-bridge';

describe('parseHello', () => {
  const nonce = '0123456789abcdef0123456789abcdef';

  it('takes a hello line at the start of a read and keeps what follows', () => {
    const rest = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    const got = parseHello(Buffer.concat([SESSION_HELLO, Buffer.from(`${nonce}\n`), rest]));
    assert.equal(got?.nonce, nonce);
    assert.ok(got?.rest.equals(rest));
  });

  it('ignores a hello that does not start the read, is cut short, or has a bad nonce', () => {
    assert.equal(
      parseHello(Buffer.concat([Buffer.from('x'), SESSION_HELLO, Buffer.from(`${nonce}\n`)])),
      undefined,
    );
    assert.equal(parseHello(Buffer.concat([SESSION_HELLO, Buffer.from(nonce)])), undefined);
    assert.equal(parseHello(Buffer.concat([SESSION_HELLO, Buffer.from('NOT-HEX\n')])), undefined);
    assert.equal(parseHello(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')), undefined);
  });
});
