import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { InvalidParameterError } from '../common/errdefs';
import { applyChanges, processWord } from './changes';

const invalid = (message: string) => (e: unknown) =>
  e instanceof InvalidParameterError && e.message === message;

describe('import changes', () => {
  it('applies what dockerd 20.10 applied for the same --change lines', () => {
    // Recorded with the reference dockerd: docker import with these changes, then image inspect.
    const config = applyChanges([
      'CMD ["/bin/sh"]',
      'ENV A=1 B="two words"',
      'ENV C $A-x',
      'WORKDIR foo',
      'WORKDIR bar',
      'USER nobody',
      'EXPOSE 80 53/udp',
      'LABEL a=b "c d"=e',
      'ENTRYPOINT echo hi',
      'VOLUME /data',
      'ONBUILD RUN x',
    ]);
    assert.deepEqual(config, {
      Cmd: ['/bin/sh'],
      Env: ['A=1', 'B=two words', 'C=1-x'],
      WorkingDir: '/foo/bar',
      User: 'nobody',
      ExposedPorts: { '80/tcp': {}, '53/udp': {} },
      Labels: { a: 'b', 'c d': 'e' },
      Entrypoint: ['/bin/sh', '-c', 'echo hi'],
      Volumes: { '/data': {} },
      OnBuild: ['RUN x'],
    });
  });

  it('ENTRYPOINT before CMD keeps both; port ranges expand; shell-form CMD', () => {
    assert.deepEqual(applyChanges(['ENTRYPOINT ["a"]', 'CMD b']), {
      Entrypoint: ['a'],
      Cmd: ['/bin/sh', '-c', 'b'],
    });
    assert.deepEqual(applyChanges(['EXPOSE 80-81', 'CMD']).ExposedPorts, { '80/tcp': {}, '81/tcp': {} });
    assert.deepEqual(applyChanges(['CMD']).Cmd, ['/bin/sh', '-c']);
    assert.deepEqual(applyChanges(['cmd sh -c "x"']).Cmd, ['/bin/sh', '-c', 'sh -c "x"']);
  });

  it('refuses what dockerd refuses, with its texts', () => {
    assert.throws(() => applyChanges(['RUN true']), invalid('run is not a valid change command'));
    assert.throws(() => applyChanges(['FOO true']), invalid('foo is not a valid change command'));
    assert.throws(
      () => applyChanges(['STOPSIGNAL SIGKILL']),
      invalid('stopsignal is not a valid change command'),
    );
    assert.throws(() => applyChanges(['ENV X']), invalid('ENV must have two arguments'));
    assert.throws(() => applyChanges(['LABEL x']), invalid('LABEL must have two arguments'));
    assert.throws(() => applyChanges(['EXPOSE abc']), invalid('Invalid containerPort: abc'));
    assert.throws(() => applyChanges(['USER']), invalid('USER requires exactly one argument'));
    assert.throws(() => applyChanges(['ONBUILD ONBUILD RUN x']), InvalidParameterError);
  });

  it('the word lexer: quotes, escapes, variables', () => {
    const env = ['A=1', 'EMPTY='];
    assert.equal(processWord(`'$A'`, env), '$A');
    assert.equal(processWord(`"$A \\$A"`, env), '1 $A');
    assert.equal(processWord('${A}x${NOPE:-d}${A:+alt}${EMPTY:-e}', env), '1xdalte');
    assert.equal(processWord('a\\ b', env), 'a b');
    assert.throws(() => processWord('"open', env), InvalidParameterError);
  });
});
