import assert from 'node:assert/strict';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import { UnauthorizedError, UnavailableError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import { FakeRegistry } from '../images/testing/fake-registry';
import { loginDomain, registryLogin } from './login-images';

const options = { log: createSilentLogger(), insecureRegistries: [], userAgent: 'capsule-test' };
const registries: FakeRegistry[] = [];

async function registry(auth: ConstructorParameters<typeof FakeRegistry>[0]): Promise<FakeRegistry> {
  const r = new FakeRegistry(auth);
  await r.start();
  registries.push(r);
  return r;
}

after(async () => {
  for (const r of registries) await r.stop();
});

describe('registry login (POST /auth)', () => {
  it('names the registry as dockerd does', () => {
    assert.equal(loginDomain(undefined), 'docker.io');
    assert.equal(loginDomain('https://index.docker.io/v1/'), 'docker.io');
    assert.equal(loginDomain('127.0.0.1:5000'), '127.0.0.1:5000');
    assert.equal(loginDomain('http://127.0.0.1:5000/some/path'), '127.0.0.1:5000');
  });

  it('an open registry: Login Succeeded whatever the credentials', async () => {
    const r = await registry({ kind: 'none' });
    const result = await registryLogin({ username: 'u', password: 'p', serveraddress: r.host }, options);
    assert.deepEqual(result, { status: 'Login Succeeded', identityToken: '' });
  });

  it('basic auth: right credentials succeed, wrong ones are 401 with dockerd text', async () => {
    const r = await registry({ kind: 'basic', user: 'alice', password: 'secret' });
    const ok = await registryLogin({ username: 'alice', password: 'secret', serveraddress: r.host }, options);
    assert.equal(ok.status, 'Login Succeeded');
    const seen = r.requests.filter((q) => q.url === '/v2/');
    assert.equal(seen.length, 2, 'a ping, then the same request with credentials');
    assert.equal(seen[1]?.authorization, `Basic ${Buffer.from('alice:secret').toString('base64')}`);
    await assert.rejects(
      registryLogin({ username: 'alice', password: 'wrong', serveraddress: `http://${r.host}` }, options),
      (err: Error) =>
        err instanceof UnauthorizedError &&
        err.message === `login attempt to http://${r.host}/v2/ failed with status: 401 Unauthorized`,
    );
  });

  it('token auth (Docker Hub flow): the token server checks the credentials', async () => {
    const r = await registry({ kind: 'bearer', user: 'alice', password: 'secret', service: 'fake' });
    const ok = await registryLogin({ username: 'alice', password: 'secret', serveraddress: r.host }, options);
    assert.equal(ok.status, 'Login Succeeded');
    const tokenRequest = r.tokenRequests.at(-1);
    assert.equal(tokenRequest?.service, 'fake');
    assert.equal(tokenRequest?.scope, null, 'a login asks for no scope');
    await assert.rejects(
      registryLogin({ username: 'alice', password: 'wrong', serveraddress: r.host }, options),
      (err: Error) =>
        err instanceof UnauthorizedError &&
        err.message === `Get "http://${r.host}/v2/": unauthorized: incorrect username or password`,
    );
  });

  it('returns the refresh token a token server issues as the identity token', async () => {
    const server = http.createServer((req, res) => {
      if (req.url?.startsWith('/token')) {
        const url = new URL(req.url, 'http://x');
        assert.equal(url.searchParams.get('offline_token'), 'true');
        assert.equal(url.searchParams.get('account'), 'bob');
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ token: 't1', refresh_token: 'refresh-1' }));
        return;
      }
      if (req.headers.authorization === 'Bearer t1') {
        res.writeHead(200).end('{}');
        return;
      }
      const { port } = server.address() as AddressInfo;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="s"` });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const result = await registryLogin(
        { username: 'bob', password: 'pw', serveraddress: `127.0.0.1:${port}` },
        options,
      );
      assert.deepEqual(result, { status: 'Login Succeeded', identityToken: 'refresh-1' });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it("an unreachable registry fails with Go's dial text", async () => {
    const server = http.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    await assert.rejects(
      registryLogin({ username: 'a', password: 'b', serveraddress: `127.0.0.1:${port}` }, options),
      (err: Error) =>
        err instanceof UnavailableError &&
        err.message ===
          `Get "http://127.0.0.1:${port}/v2/": dial tcp 127.0.0.1:${port}: connect: connection refused`,
    );
  });
});
