/**
 * How a failed container start is reported: crun's own error (from its --log file) turned into a
 * message that reads like dockerd's and the exit status Docker records for it.
 *
 * crun (1.8, measured) fails `crun run` with exit status 1 and a log entry, before writing its
 * --pid-file, for: an executable not found (`executable file \`X\` not found in $PATH: No such file
 * or directory`), not executable (`open executable: Permission denied`), a directory
 * (`open executable: Operation not permitted`), a cwd that is not a directory (`chdir \`/x\`: Not a
 * directory`). dockerd reports these as `... unable to start container process: exec: "X":
 * executable file not found in $PATH` (exit 127) and `exec: "X": permission denied` (exit 126), and
 * gives any other start failure exit status 128; 126 and 127 are "invalid config" (HTTP 400), the
 * rest a system error (HTTP 500). A process that starts and then fails (exec format error, a
 * missing ELF interpreter) is not a start failure: crun has then written its pid file, and the
 * failure is the process's stderr and exit status, as with runc.
 */

export interface StartFailure {
  /** dockerd-like message, naming the executable. */
  message: string;
  /** Docker's State.ExitCode for it: 127 not found, 126 cannot execute, 128 anything else. */
  exitCode: 126 | 127 | 128;
  /** True for 126/127: the container's configuration is at fault (dockerd answers 400). */
  invalidConfig: boolean;
}

const PREFIX = 'OCI runtime create failed: crun: ';

/** The error messages crun logged (`--log-format=json`), oldest first. */
export function crunLogErrors(logText: string): string[] {
  const out: string[] = [];
  for (const line of logText.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '') continue;
    try {
      const entry = JSON.parse(trimmed) as { msg?: unknown; level?: unknown };
      if (typeof entry.msg === 'string' && (entry.level === undefined || entry.level === 'error')) {
        out.push(entry.msg);
      }
    } catch {
      out.push(trimmed);
    }
  }
  return out;
}

/** Translates crun's error for a start of `executable` (the process's args[0]). */
export function translateStartFailure(crunMessage: string, executable: string): StartFailure {
  const notFound = /^executable file `(.*)` not found in \$PATH/.exec(crunMessage);
  if (notFound) {
    return {
      message: `${PREFIX}unable to start container process: exec: ${JSON.stringify(notFound[1] ?? executable)}: executable file not found in $PATH`,
      exitCode: 127,
      invalidConfig: true,
    };
  }
  if (/^open executable: (Permission denied|Operation not permitted)/.test(crunMessage)) {
    return {
      message: `${PREFIX}unable to start container process: exec: ${JSON.stringify(executable)}: permission denied`,
      exitCode: 126,
      invalidConfig: true,
    };
  }
  // dockerd's own classification of runtime messages (translateContainerdStartErr).
  const lower = crunMessage.toLowerCase();
  if (lower.includes('permission denied')) {
    return { message: PREFIX + crunMessage, exitCode: 126, invalidConfig: true };
  }
  if (
    lower.includes('not a directory') ||
    (crunMessage.includes(executable) &&
      (lower.includes('executable file not found') || lower.includes('no such file or directory')))
  ) {
    return { message: PREFIX + crunMessage, exitCode: 127, invalidConfig: true };
  }
  return { message: PREFIX + crunMessage, exitCode: 128, invalidConfig: false };
}

const EXEC_PREFIX = 'OCI runtime exec failed: exec failed: ';

/**
 * Translates crun's error for an exec of `executable` into runc's wording as dockerd 20.10 shows it
 * (`OCI runtime exec failed: exec failed: unable to start container process: exec: "X": executable
 * file not found in $PATH`; dockerd appends `: unknown`). dockerd records exit status 126 for every
 * exec that fails to start, whatever the reason (measured), so `exitCode` is 126 here.
 */
export function translateExecFailure(crunMessage: string, executable: string): StartFailure {
  const chdir = /^chdir `(.*)`: (.*)$/.exec(crunMessage);
  if (chdir) {
    return {
      message: `${EXEC_PREFIX}unable to start container process: chdir to cwd (${JSON.stringify(chdir[1] ?? '')}) set in config.json failed: ${(chdir[2] ?? '').toLowerCase()}`,
      exitCode: 126,
      invalidConfig: true,
    };
  }
  const failure = translateStartFailure(crunMessage, executable);
  const message = failure.message.startsWith(PREFIX) ? failure.message.slice(PREFIX.length) : failure.message;
  return { message: EXEC_PREFIX + message, exitCode: 126, invalidConfig: failure.invalidConfig };
}
