import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { InvalidParameterError } from '../common/errdefs';
import { createSilentLogger } from '../common/logger';
import {
  DEFAULT_CONFIG,
  loadConfigFile,
  mergeLogOptions,
  parseConfigFile,
  resolveConfig,
  validateInsecureRegistry,
  validateMirror,
  type ConfigFile,
} from './config';
import { createDaemon } from './daemon';
import { FakeImageService, FakeSandboxRuntime } from './testing/fakes';
import { containerConfig, hostConfig } from './testing/fixture';

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

describe('daemon.json configuration file', () => {
  const file = (values: Record<string, unknown>, path = '/etc/capsule/daemon.json'): ConfigFile =>
    parseConfigFile(JSON.stringify(values), path);

  it('sets every option it knows; flags set the others', () => {
    const c = resolveConfig(
      { accel: 'tcg' },
      {},
      file({
        hosts: ['unix:///run/x/docker.sock'],
        'data-root': '/d',
        'exec-root': '/e',
        'guest-assets': '/g',
        'log-level': 'warn',
        'insecure-registries': ['http://myreg:5000', '10.0.0.0/8'],
        'registry-mirrors': ['http://127.0.0.1:5000', 'https://mirror.example.com/'],
        'max-concurrent-downloads': 5,
      }),
    );
    assert.equal(c.socketPath, '/run/x/docker.sock');
    assert.equal(c.dataRoot, '/d');
    assert.equal(c.execRoot, '/e');
    assert.equal(c.guestAssetsDir, '/g');
    assert.equal(c.logLevel, 'warn');
    assert.equal(c.accel, 'tcg');
    assert.deepEqual(c.insecureRegistries, ['myreg:5000', '10.0.0.0/8']);
    assert.deepEqual(c.registryMirrors, ['http://127.0.0.1:5000/', 'https://mirror.example.com/']);
    assert.equal(c.maxConcurrentDownloads, 5);
  });

  it('the file overrides the environment', () => {
    const c = resolveConfig({}, { CAPSULE_DATA_ROOT: '/env' }, file({ 'data-root': '/file' }));
    assert.equal(c.dataRoot, '/file');
  });

  it('debug turns on debug logging whatever log-level says', () => {
    const c = resolveConfig({}, {}, file({ debug: true, 'log-level': 'warn' }));
    assert.equal(c.debug, true);
    assert.equal(c.logLevel, 'debug');
    assert.equal(resolveConfig({ debug: true }).logLevel, 'debug');
  });

  it('an option set both as a flag and in the file is an error with dockerd text', () => {
    assert.throws(
      () =>
        resolveConfig(
          { registryMirror: ['http://127.0.0.1:5792/'], debug: true },
          {},
          file({ 'registry-mirrors': ['http://127.0.0.1:5792'], debug: true }, 'a.json'),
        ),
      {
        message:
          'unable to configure the Capsule daemon with file a.json: the following directives are specified both as a flag and in the configuration file: ' +
          'debug: (from flag: true, from file: true), registry-mirrors: (from flag: [http://127.0.0.1:5792/], from file: [http://127.0.0.1:5792])',
      },
    );
    assert.throws(
      () => resolveConfig({ socket: '/s.sock' }, {}, file({ hosts: ['unix:///other.sock'] }, 'b.json')),
      /hosts: \(from flag: \[unix:\/\/\/s\.sock\], from file: \[unix:\/\/\/other\.sock\]\)/,
    );
  });

  it('unknown keys and wrong types are errors with dockerd text', () => {
    assert.throws(() => parseConfigFile('{"foo":1,"bar":2}', 'b.json'), {
      message:
        "unable to configure the Capsule daemon with file b.json: the following directives don't match any configuration option: bar, foo",
    });
    assert.throws(() => parseConfigFile('{"debug":"yes"}', 'c.json'), {
      message:
        'unable to configure the Capsule daemon with file c.json: json: cannot unmarshal string into Go struct field Config.debug of type bool',
    });
    assert.throws(() => parseConfigFile('{"registry-mirrors":"http://x"}', 'd.json'), /of type \[\]string/);
    assert.throws(
      () => parseConfigFile('{bad', 'g.json'),
      /unable to configure the Capsule daemon with file g\.json: /,
    );
    assert.throws(() => parseConfigFile('[]', 'h.json'), /cannot unmarshal array/);
    assert.deepEqual(parseConfigFile('', 'empty.json').values, {});
  });

  it('a missing default file is fine; a missing explicit file is an error', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-config-'));
    try {
      const missing = path.join(dir, 'daemon.json');
      assert.equal(loadConfigFile(missing, false), undefined);
      assert.throws(() => loadConfigFile(missing, true), {
        message: `unable to configure the Capsule daemon with file ${missing}: open ${missing}: no such file or directory`,
      });
      await fs.writeFile(missing, '{"registry-mirrors":["http://127.0.0.1:5000"]}');
      assert.deepEqual(loadConfigFile(missing, true)?.values, {
        'registry-mirrors': ['http://127.0.0.1:5000'],
      });
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('validates mirrors as dockerd does', () => {
    assert.equal(validateMirror('http://127.0.0.1:5000'), 'http://127.0.0.1:5000/');
    assert.equal(validateMirror('https://m.example.com/'), 'https://m.example.com/');
    assert.throws(() => validateMirror('127.0.0.1:5792'), {
      message: 'invalid mirror: "127.0.0.1:5792" is not a valid URI',
    });
    assert.throws(() => validateMirror('ftp://m.example.com'), /unsupported scheme "ftp"/);
    assert.throws(() => validateMirror('http://127.0.0.1:5792/path'), {
      message: 'invalid mirror: path, query, or fragment at end of the URI "http://127.0.0.1:5792/path"',
    });
    assert.throws(
      () => validateMirror('http://u:p@m.example.com'),
      /username\/password not allowed in URI "http:\/\/u:xxxxx@m\.example\.com\/"/,
    );
  });

  it('normalises insecure registries and hosts', () => {
    assert.equal(validateInsecureRegistry('https://reg:5000'), 'reg:5000');
    assert.equal(validateInsecureRegistry('10.0.0.0/8'), '10.0.0.0/8');
    assert.throws(() => validateInsecureRegistry('ftp://reg'), /should not contain ':\/\/'/);
    assert.throws(
      () => resolveConfig({ host: ['tcp://127.0.0.1:2375'] }),
      /only unix:\/\/ hosts are supported/,
    );
    assert.throws(() => resolveConfig({ host: ['unix:///a', 'unix:///b'] }), /exactly one unix socket/);
    assert.equal(resolveConfig({ host: ['unix:///x.sock'] }).socketPath, '/x.sock');
    assert.throws(() => resolveConfig({ maxConcurrentDownloads: '0' }), /must be a whole number >= 1/);
    assert.equal(resolveConfig({ warmPool: '0' }).warmPoolSize, 0);
    assert.throws(() => resolveConfig({ warmPool: '-1' }), /--warm-pool: must be a whole number >= 0/);
  });
});

describe('daemon.json log-driver and log-opts', () => {
  const file = (values: Record<string, unknown>, at = 'l.json'): ConfigFile =>
    parseConfigFile(JSON.stringify(values), at);

  it('log-driver json-file is accepted; any other driver stops the daemon with a clear error', () => {
    assert.equal(resolveConfig({}, {}, file({ 'log-driver': 'json-file' })).logDriver, 'json-file');
    assert.equal(resolveConfig({}).logDriver, 'json-file');
    assert.throws(() => resolveConfig({}, {}, file({ 'log-driver': 'journald' })), {
      message:
        'l.json: log-driver: logging driver "journald" is not supported; Capsule has only the json-file driver',
    });
    assert.throws(
      () => resolveConfig({ logDriver: 'syslog' }),
      /--log-driver: logging driver "syslog" is not supported/,
    );
    assert.throws(() => parseConfigFile('{"log-driver":7}', 'n.json'), {
      message:
        'unable to configure the Capsule daemon with file n.json: json: cannot unmarshal number into Go struct field Config.log-driver of type string',
    });
  });

  it('log-opts become the defaults (keys sorted); unknown keys and bad values stop the daemon', () => {
    const c = resolveConfig({}, {}, file({ 'log-opts': { 'max-size': '10m', 'max-file': '3' } }));
    assert.deepEqual(Object.entries(c.logOpts), [
      ['max-file', '3'],
      ['max-size', '10m'],
    ]);
    assert.deepEqual(resolveConfig({}).logOpts, {});
    assert.deepEqual(resolveConfig({ logOpt: ['max-size=1m', 'labels=a=b'] }).logOpts, {
      labels: 'a=b',
      'max-size': '1m',
    });
    // dockerd: "failed to start daemon: failed to set log opts: unknown log opt 'max-sizes' for json-file log driver"
    assert.throws(() => resolveConfig({}, {}, file({ 'log-opts': { 'max-sizes': '1m' } })), {
      message:
        "l.json: log-opts: failed to set log opts: unknown log opt 'max-sizes' for json-file log driver",
    });
    assert.throws(
      () => resolveConfig({}, {}, file({ 'log-opts': { 'max-size': 'lots' } })),
      /log-opts: failed to set log opts: failed to initialize logging driver: invalid size: 'lots'/,
    );
    assert.throws(() => resolveConfig({ logOpt: ['max-size'] }), /--log-opt: invalid value "max-size"/);
    assert.throws(() => parseConfigFile('{"log-opts":{"max-file":3}}', 'm.json'), {
      message:
        'unable to configure the Capsule daemon with file m.json: json: cannot unmarshal number into Go struct field Config.log-opts of type string',
    });
    assert.throws(
      () => parseConfigFile('{"log-opts":["max-file=3"]}', 'm.json'),
      /cannot unmarshal array into Go struct field Config\.log-opts of type map\[string\]string/,
    );
    assert.throws(
      () => resolveConfig({ logOpt: ['max-size=1m'] }, {}, file({ 'log-opts': { 'max-size': '2m' } })),
      /log-opts: \(from flag: map\[max-size:1m\], from file: map\[max-size:2m\]\)/,
    );
  });

  it("mergeLogOptions: the daemon's options fill the keys a container left unset, the container's win", () => {
    const defaults = { 'max-size': '10m', 'max-file': '3' };
    assert.deepEqual(Object.entries(mergeLogOptions({}, defaults)), [
      ['max-file', '3'],
      ['max-size', '10m'],
    ]);
    assert.deepEqual(mergeLogOptions({ 'max-size': '1m' }, defaults), { 'max-file': '3', 'max-size': '1m' });
    assert.deepEqual(mergeLogOptions({ 'max-file': '5', compress: 'true' }, {}), {
      compress: 'true',
      'max-file': '5',
    });
  });

  it('a container created without its own log options gets the daemon log-opts, and inspect shows them', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'capsule-config-log-'));
    const config = resolveConfig(
      { socket: path.join(dir, 's'), dataRoot: path.join(dir, 'data'), execRoot: path.join(dir, 'exec') },
      {},
      file({ 'log-driver': 'json-file', 'log-opts': { 'max-size': '10m', 'max-file': '3' } }),
    );
    const daemon = await createDaemon({
      config,
      log: createSilentLogger(),
      images: new FakeImageService({ images: [{ ref: 'busybox:latest', config: { Cmd: ['sh'] } }] }),
      runtime: new FakeSandboxRuntime(),
    });
    try {
      const logConfigOf = async (own: Record<string, string>): Promise<unknown> => {
        const { id } = await daemon.containerCreate({
          name: '',
          config: containerConfig({ cmd: ['true'] }),
          hostConfig: hostConfig({ logConfig: { type: 'json-file', config: own } }),
        });
        const { type, config: opts } = daemon.containerInspect(id).hostConfig.logConfig;
        return { type, entries: Object.entries(opts) };
      };
      // As dockerd 20.10 with this daemon.json: {"Type":"json-file","Config":{"max-file":"3","max-size":"10m"}}.
      assert.deepEqual(await logConfigOf({}), {
        type: 'json-file',
        entries: [
          ['max-file', '3'],
          ['max-size', '10m'],
        ],
      });
      assert.deepEqual(await logConfigOf({ 'max-size': '1m' }), {
        type: 'json-file',
        entries: [
          ['max-file', '3'],
          ['max-size', '1m'],
        ],
      });
      await assert.rejects(
        logConfigOf({ 'max-sizes': '1m' }),
        (e: unknown) =>
          e instanceof InvalidParameterError &&
          e.message === "unknown log opt 'max-sizes' for json-file log driver",
      );
    } finally {
      await daemon.shutdown();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
