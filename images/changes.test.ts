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

  it('HEALTHCHECK as dockerd 20.10 parses it (recorded with docker commit --change)', () => {
    const hc = (line: string, base = {}) => applyChanges([line], base).Healthcheck;
    assert.deepEqual(
      hc('HEALTHCHECK --interval=1s --timeout=2s --start-period=3s --retries=4 CMD ["a","b"]'),
      { Test: ['CMD', 'a', 'b'], Interval: 1e9, Timeout: 2e9, StartPeriod: 3e9, Retries: 4 },
    );
    assert.deepEqual(hc('HEALTHCHECK NONE'), { Test: ['NONE'] });
    assert.deepEqual(hc('healthcheck cmd echo  "a  b"'), { Test: ['CMD-SHELL', 'echo  "a  b"'] });
    assert.deepEqual(hc('HEALTHCHECK --interval=1ms CMD x'), { Test: ['CMD-SHELL', 'x'], Interval: 1e6 });
    assert.deepEqual(hc('HEALTHCHECK cmd [ "x" ]'), { Test: ['CMD', 'x'] });
    // commit: what the change leaves unset comes from the container's config.
    assert.deepEqual(hc('HEALTHCHECK --interval=1s CMD true', { Healthcheck: { Retries: 2 } }), {
      Test: ['CMD-SHELL', 'true'],
      Interval: 1e9,
      Retries: 2,
    });
    const refused: Array<[string, string]> = [
      ['HEALTHCHECK', 'HEALTHCHECK requires at least one argument'],
      ['HEALTHCHECK NONE x', 'HEALTHCHECK NONE takes no arguments'],
      ['HEALTHCHECK FOO x', 'Unknown type "FOO" in HEALTHCHECK (try CMD)'],
      ['HEALTHCHECK CMD-SHELL x', 'Unknown type "CMD-SHELL" in HEALTHCHECK (try CMD)'],
      ['HEALTHCHECK CMD', 'Missing command after HEALTHCHECK CMD'],
      ['HEALTHCHECK --interval=0s CMD x', 'Interval "interval" cannot be less than 1ms'],
      ['HEALTHCHECK --interval=500us CMD x', 'Interval "interval" cannot be less than 1ms'],
      ['HEALTHCHECK --interval=abc CMD x', 'time: invalid duration "abc"'],
      ['HEALTHCHECK --retries=0 CMD x', '--retries must be at least 1 (not 0)'],
      ['HEALTHCHECK --retries=x CMD x', 'strconv.ParseInt: parsing "x": invalid syntax'],
      ['HEALTHCHECK --interval CMD x', 'Missing a value on flag: interval'],
      ['HEALTHCHECK --foo=1 CMD x', 'Unknown flag: foo'],
    ];
    for (const [line, message] of refused) assert.throws(() => applyChanges([line]), invalid(message), line);
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
