import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crunLogErrors, translateExecFailure, translateStartFailure } from './start-failure';

// crun 1.8's messages, as logged by `crun run` on this machine.
describe('translateStartFailure', () => {
  it('executable not found: 127, names the executable like dockerd', () => {
    const f = translateStartFailure(
      'executable file `nosuch` not found in $PATH: No such file or directory',
      'nosuch',
    );
    assert.equal(f.exitCode, 127);
    assert.equal(f.invalidConfig, true);
    assert.equal(
      f.message,
      'OCI runtime create failed: crun: unable to start container process: exec: "nosuch": executable file not found in $PATH',
    );
  });

  it('not executable (file or directory): 126 permission denied', () => {
    for (const msg of ['open executable: Permission denied', 'open executable: Operation not permitted']) {
      const f = translateStartFailure(msg, '/etc');
      assert.equal(f.exitCode, 126);
      assert.match(f.message, /exec: "\/etc": permission denied$/);
    }
  });

  it('cwd not a directory: 127 (dockerd maps ENOTDIR so)', () => {
    const f = translateStartFailure('chdir `/etc/passwd`: Not a directory', 'sh');
    assert.equal(f.exitCode, 127);
    assert.equal(f.message, 'OCI runtime create failed: crun: chdir `/etc/passwd`: Not a directory');
  });

  it('anything else: 128, a system error, crun message kept', () => {
    const f = translateStartFailure('mount `proc` to `/proc`: Device or resource busy', 'sh');
    assert.equal(f.exitCode, 128);
    assert.equal(f.invalidConfig, false);
    assert.match(f.message, /mount `proc`/);
  });
});

describe('crunLogErrors', () => {
  it('reads json log lines and keeps plain ones', () => {
    const log = [
      '{"msg":"first","level":"error","time":"2026-11-29T20:16:42.550082Z"}',
      '{"msg":"a warning","level":"warning","time":"2026-11-29T20:16:42.550082Z"}',
      'plain text',
      '',
    ].join('\n');
    assert.deepEqual(crunLogErrors(log), ['first', 'plain text']);
  });
});

describe('translateExecFailure', () => {
  it("runc's wording as dockerd shows it, exit 126 whatever the reason", () => {
    const missing = translateExecFailure(
      'executable file `nosuch` not found in $PATH: No such file or directory',
      'nosuch',
    );
    assert.equal(
      missing.message,
      'OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": executable file not found in $PATH',
    );
    assert.equal(missing.exitCode, 126);
    const denied = translateExecFailure('open executable: Permission denied', '/etc/passwd');
    assert.equal(
      denied.message,
      'OCI runtime exec failed: exec failed: unable to start container process: exec: "/etc/passwd": permission denied',
    );
    assert.equal(denied.exitCode, 126);
    const cwd = translateExecFailure('chdir `/nonexist`: No such file or directory', 'pwd');
    assert.equal(
      cwd.message,
      'OCI runtime exec failed: exec failed: unable to start container process: chdir to cwd ("/nonexist") set in config.json failed: no such file or directory',
    );
    assert.equal(translateExecFailure('something else broke', 'x').exitCode, 126);
  });
});
