import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConflictError, SystemError } from '../common/errdefs';
import type { GuestProcess, RunningSandbox } from '../runtime/types';
import { ContainerMonitor, formatTop, parsePsArgs, psCpuTime, psStartTime, TOP_TITLES } from './top-stats';

const NOW = new Date(2026, 10, 30, 2, 51, 40).getTime();

/** A guest's `sleep 2000`, as the reference dockerd's busybox container had it. */
function proc(over: Partial<GuestProcess> = {}): GuestProcess {
  return {
    pid: 22311,
    ppid: 22289,
    uid: 0,
    user: 'root',
    startTimeSec: Math.floor(NOW / 1000) - 9,
    cpuTimeMs: 150,
    elapsedMs: 9_500,
    tty: '?',
    cmd: 'sleep 2000',
    comm: 'sleep',
    state: 'S',
    nice: 0,
    pgid: 22311,
    sid: 22311,
    tpgid: -1,
    nlwp: 1,
    vszKb: 2268,
    rssKb: 1440,
    lockedKb: 0,
    memTotalKb: 256 * 1024,
    flags: 0x40_4100,
    priority: 20,
    processor: 1,
    wchan: 'hrtimer_nanosleep',
    threads: [],
    ...over,
  };
}

const top = (psArgs: string, p: GuestProcess[] = [proc()]) => formatTop(p, psArgs, NOW);

function psFails(psArgs: string, message: string | RegExp) {
  assert.throws(
    () => top(psArgs),
    (err: unknown) => {
      assert.ok(err instanceof SystemError, `${String(err)} is a SystemError (500)`);
      if (typeof message === 'string') assert.equal(err.message, message);
      else assert.match(err.message, message);
      return true;
    },
    `ps_args ${JSON.stringify(psArgs)}`,
  );
}

describe('docker top time formats (procps)', () => {
  it('TIME is [DD-]HH:MM:SS of cumulative CPU time', () => {
    assert.equal(psCpuTime(0), '00:00:00');
    assert.equal(psCpuTime(61_500), '00:01:01');
    assert.equal(psCpuTime((26 * 3600 + 5) * 1000), '1-02:00:05');
  });

  it('STIME is HH:MM on the same day, MonDD earlier in the year, else the year (local time)', () => {
    const start = new Date(2026, 10, 29, 9, 5, 0).getTime();
    assert.equal(psStartTime(start / 1000, start + 3600_000), '09:05');
    assert.equal(psStartTime(start / 1000, new Date(2026, 10, 30, 0, 10).getTime()), 'Nov29');
    assert.equal(psStartTime(start / 1000, new Date(2027, 0, 2).getTime()), '2026');
  });

  it('etime, start, lstart, bsdtime and times as procps prints them', () => {
    const row = (over: Partial<GuestProcess>) =>
      top('-o pid,etime,etimes,start,lstart,bsdtime,times', [proc(over)]).processes[0] ?? [];
    const start = new Date(2026, 10, 30, 2, 51, 31);
    assert.deepEqual(row({ startTimeSec: start.getTime() / 1000, elapsedMs: 65_400, cpuTimeMs: 125_000 }), [
      '22311',
      '01:05',
      '65',
      '02:51:31',
      'Mon Nov 30 02:51:31 2026',
      '2:05',
      '125',
    ]);
    const old = new Date(2026, 10, 7, 8, 0, 0).getTime() / 1000;
    assert.deepEqual(row({ startTimeSec: old, elapsedMs: (2 * 86400 + 3 * 3600) * 1000 }).slice(1, 5), [
      '2-03:00:00',
      String(2 * 86400 + 3 * 3600),
      'Nov 07',
      'Sat Nov  7 08:00:00 2026',
    ]);
    assert.equal(row({ elapsedMs: 3 * 3600 * 1000 })[1], '03:00:00');
  });
});

describe('docker top honours ps_args (titles and values as dockerd 20.10 with procps 4)', () => {
  it('no ps_args, -ef and -f: UID PID PPID C STIME TTY TIME CMD', () => {
    for (const psArgs of ['', '-ef', '-f', '-e -f', '-A -f']) {
      const r = top(psArgs);
      assert.deepEqual(r.titles, ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD'], psArgs);
      assert.deepEqual(r.processes, [
        ['root', '22311', '22289', '1', '02:51', '?', '00:00:00', 'sleep 2000'],
      ]);
    }
    assert.deepEqual(TOP_TITLES, ['UID', 'PID', 'PPID', 'C', 'STIME', 'TTY', 'TIME', 'CMD']);
  });

  it('aux, -aux and u: the BSD user format', () => {
    for (const psArgs of ['aux', '-aux', 'u', 'au', '-au', 'uaxw']) {
      const r = top(psArgs);
      assert.deepEqual(
        r.titles,
        ['USER', 'PID', '%CPU', '%MEM', 'VSZ', 'RSS', 'TTY', 'STAT', 'START', 'TIME', 'COMMAND'],
        psArgs,
      );
      assert.deepEqual(r.processes, [
        ['root', '22311', '1.6', '0.5', '2268', '1440', '?', 'Ss', '02:51', '0:00', 'sleep 2000'],
      ]);
    }
  });

  it('-o pid,user,comm and -o pid,rss,vsz,stat,args', () => {
    assert.deepEqual(top('-o pid,user,comm'), {
      titles: ['PID', 'USER', 'COMMAND'],
      processes: [['22311', 'root', 'sleep']],
    });
    assert.deepEqual(top('-o pid,rss,vsz,stat,args'), {
      titles: ['PID', 'RSS', 'VSZ', 'STAT', 'COMMAND'],
      processes: [['22311', '1440', '2268', 'Ss', 'sleep 2000']],
    });
  });

  it('-eo, o, -o twice, -opid, --format and axo all give PID COMMAND', () => {
    for (const psArgs of [
      '-eo pid,comm',
      'o pid,comm',
      '-o pid -o comm',
      '-opid,comm',
      '--format=pid,comm',
      '--format pid,comm',
      'axo pid,comm',
      '-o pid=PID,comm',
    ]) {
      assert.deepEqual(top(psArgs), { titles: ['PID', 'COMMAND'], processes: [['22311', 'sleep']] }, psArgs);
    }
  });

  it('the common specifiers with procps headers', () => {
    const r = top(
      '-o pid,ppid,uid,user,comm,args,cmd,command,rss,vsz,stat,s,%cpu,pcpu,%mem,pmem,etime,time,tty,start,stime,nlwp',
    );
    assert.deepEqual(r.titles, [
      'PID',
      'PPID',
      'UID',
      'USER',
      'COMMAND',
      'COMMAND',
      'CMD',
      'COMMAND',
      'RSS',
      'VSZ',
      'STAT',
      'S',
      '%CPU',
      '%CPU',
      '%MEM',
      '%MEM',
      'ELAPSED',
      'TIME',
      'TT',
      'STARTED',
      'STIME',
      'NLWP',
    ]);
    assert.deepEqual(r.processes[0], [
      '22311',
      '22289',
      '0',
      'root',
      'sleep',
      'sleep 2000',
      'sleep 2000',
      'sleep 2000',
      '1440',
      '2268',
      'Ss',
      'S',
      '1.6',
      '1.6',
      '0.5',
      '0.5',
      '00:09',
      '00:00:00',
      '?',
      '02:51:31',
      '02:51',
      '1',
    ]);
    const more = top('-o pid,vsize,rssize,cputime,etimes,pgid,sid,ni,lwp,fname,ucomm,euser');
    assert.deepEqual(more.titles, [
      'PID',
      'VSZ',
      'RSS',
      'TIME',
      'ELAPSED',
      'PGID',
      'SID',
      'NI',
      'LWP',
      'COMMAND',
      'COMMAND',
      'EUSER',
    ]);
    assert.deepEqual(more.processes[0], [
      '22311',
      '2268',
      '1440',
      '00:00:00',
      '9',
      '22311',
      '22311',
      '0',
      '22311',
      'sleep',
      'sleep',
      'root',
    ]);
  });

  it('a renamed column takes its header (`-o pid,user=X`)', () => {
    assert.deepEqual(top('-o pid,user=X').titles, ['PID', 'X']);
  });

  it('-e gives PID TTY TIME CMD with the command name; x, ax and -ax PID TTY STAT TIME COMMAND', () => {
    for (const psArgs of ['-e', '-A', '-a', '-d']) {
      assert.deepEqual(top(psArgs), {
        titles: ['PID', 'TTY', 'TIME', 'CMD'],
        processes: [['22311', '?', '00:00:00', 'sleep']],
      });
    }
    for (const psArgs of ['x', 'ax', '-ax']) {
      assert.deepEqual(top(psArgs), {
        titles: ['PID', 'TTY', 'STAT', 'TIME', 'COMMAND'],
        processes: [['22311', '?', 'Ss', '0:00', 'sleep 2000']],
      });
    }
  });

  it('STAT flags: <, N, L, s, l, +; a zombie is <defunct>', () => {
    const stat = (over: Partial<GuestProcess>) => top('-o pid,stat', [proc(over)]).processes[0]?.[1];
    assert.equal(stat({ state: 'R', nice: -5, lockedKb: 4, nlwp: 3, pgid: 7, tpgid: 7 }), 'R<Lsl+');
    assert.equal(stat({ state: 'S', nice: 10, sid: 1 }), 'SN');
    const zombie = top('-o pid,comm,args', [proc({ state: 'Z', cmd: '[sleep]' })]).processes[0];
    assert.deepEqual(zombie, ['22311', 'sleep <defunct>', '[sleep] <defunct>']);
  });

  it('%CPU is per mille over whole seconds of life (no decimal from 100%); C stops at 99', () => {
    const row = (over: Partial<GuestProcess>) => top('-o pid,%cpu,c', [proc(over)]).processes[0]?.slice(1);
    assert.deepEqual(row({ cpuTimeMs: 15_000, elapsedMs: 10_900 }), ['150', '99']);
    assert.deepEqual(row({ cpuTimeMs: 2_500, elapsedMs: 10_000 }), ['25.0', '25']);
    assert.deepEqual(row({ cpuTimeMs: 30, elapsedMs: 400 }), ['0.0', '0']);
  });
});

describe('docker top errors as dockerd words them (500)', () => {
  it('ps errors', () => {
    psFails('--nosuch', 'ps: error: unknown gnu long option');
    psFails('-o pid,nosuchfield', 'ps: error: unknown user-defined format specifier "nosuchfield"');
    psFails('-o', 'ps: error: format specification must follow -o');
    psFails('-o pid,,comm', 'ps: error: improper format list');
    psFails('-f u', 'ps: error: conflicting format options');
    psFails('-ef -o pid', 'ps: error: conflicting format options');
    psFails('-o PID', 'ps: error: unknown user-defined format specifier "PID"');
  });

  it('no PID column', () => {
    psFails('-o user,comm', "Couldn't find PID field in ps output");
    psFails('-o pid=P,comm=', "Couldn't find PID field in ps output");
  });

  it('renaming another column to PID is refused before ps runs', () => {
    psFails('-o user=PID,pid', 'specifying "user=PID,pid" is not allowed');
  });

  it("selection options pick among the container's processes (dockerd keeps those ps selects); -e selects all", () => {
    const procs = [
      proc({ pid: 1, ppid: 0, sid: 1, comm: 'sh', cmd: 'sh', uid: 0, user: 'root' }),
      proc({ pid: 7, ppid: 1, sid: 1, comm: 'sleep', cmd: 'sleep 9', uid: 1000, user: 'app' }),
      proc({ pid: 9, ppid: 7, sid: 9, comm: 'cat', cmd: 'cat', uid: 1000, user: 'app' }),
    ];
    const pids = (psArgs: string) => top(psArgs, procs).processes.map((r) => r[1]);
    assert.deepEqual(pids('-f -p 7'), ['7']);
    assert.deepEqual(pids('-f -p1,9'), ['1', '9']);
    assert.deepEqual(pids('-f --pid=9'), ['9']);
    assert.deepEqual(pids('-f -u app'), ['7', '9']);
    assert.deepEqual(pids('-f -u 0'), ['1']);
    assert.deepEqual(pids('-f -C sleep,cat'), ['7', '9']);
    assert.deepEqual(pids('-f --ppid 1'), ['7']);
    assert.deepEqual(pids('-f -s 9'), ['9']);
    // Options add up; -e selects every process.
    assert.deepEqual(pids('-f -p 1 -C cat'), ['1', '9']);
    assert.deepEqual(pids('-ef -p 7'), ['1', '7', '9']);
    assert.deepEqual(pids('-f -p 4242'), []);
    assert.deepEqual(top('p 7 o pid,comm', procs).processes, [['7', 'sleep']], 'BSD p with a BSD format');
    psFails('-p', 'ps: error: list of process IDs must follow -p');
    psFails('-p x', 'ps: error: process ID list syntax error');
    psFails('-p 1,,2', 'ps: error: process ID list syntax error');
    psFails('-C', 'ps: error: list of command names must follow -C');
  });

  it('what Capsule cannot format is named, never answered with the default columns', () => {
    psFails('-t pts/0', /^ps: the option -t is not supported by Capsule/);
    psFails('fx', /^ps: the option f is not supported/);
    psFails('-f x', /^ps: a UNIX format \(-f, -F, -l, -j\) with BSD options is not supported/);
    psFails('-o pid,pending', /^ps: the format specifier "pending" is not supported/);
    psFails('--sort=pid', /^ps: the option --sort is not supported/);
  });

  it("procps' own errors for -y without -l and for -L with -T", () => {
    psFails('-y', 'ps: error: modifier -y without format -l makes no sense');
    psFails('-jy', 'ps: error: modifier -y without format -l makes no sense');
    psFails('-LT', "ps: error: thread flags conflict; can't use both -L and -T");
  });

  it('parsePsArgs defaults to -ef', () => {
    const format = parsePsArgs('');
    assert.deepEqual(
      format.columns.map((c) => c.header),
      TOP_TITLES,
    );
    assert.equal(format.threads, false);
  });
});

describe('docker top: -F, -l, -j, -y and their combinations (headers as procps 4.0.2 prints them)', () => {
  const headers: [string, string][] = [
    ['-e', 'PID TTY TIME CMD'],
    ['-l', 'F S UID PID PPID C PRI NI ADDR SZ WCHAN TTY TIME CMD'],
    ['-lf', 'F S UID PID PPID C PRI NI ADDR SZ WCHAN STIME TTY TIME CMD'],
    ['-ly', 'S UID PID PPID C PRI NI RSS SZ WCHAN TTY TIME CMD'],
    ['-F', 'UID PID PPID C SZ RSS PSR STIME TTY TIME CMD'],
    ['-Fl', 'F S UID PID PPID C PRI NI ADDR SZ WCHAN RSS PSR STIME TTY TIME CMD'],
    ['-j', 'PID PGID SID TTY TIME CMD'],
    ['-jf', 'UID PID PPID PGID SID C STIME TTY TIME CMD'],
    ['-jl', 'F S UID PID PPID PGID SID C PRI NI ADDR SZ WCHAN TTY TIME CMD'],
    ['-jF', 'UID PID PPID PGID SID C SZ RSS PSR STIME TTY TIME CMD'],
    ['-lFj', 'F S UID PID PPID PGID SID C PRI NI ADDR SZ WCHAN RSS PSR STIME TTY TIME CMD'],
    ['-L', 'PID LWP TTY TIME CMD'],
    ['-fL', 'UID PID PPID LWP C NLWP STIME TTY TIME CMD'],
    ['-eLf', 'UID PID PPID LWP C NLWP STIME TTY TIME CMD'],
    ['-FL', 'UID PID PPID LWP C NLWP SZ RSS PSR STIME TTY TIME CMD'],
    ['-lL', 'F S UID PID PPID LWP C PRI NI ADDR SZ WCHAN TTY TIME CMD'],
    ['-jL', 'PID PGID SID LWP TTY TIME CMD'],
    ['-T', 'PID SPID TTY TIME CMD'],
    ['-fT', 'UID PID SPID PPID C STIME TTY TIME CMD'],
    ['-lT', 'F S UID PID SPID PPID C PRI NI ADDR SZ WCHAN TTY TIME CMD'],
    ['-FT', 'UID PID SPID PPID C SZ RSS PSR STIME TTY TIME CMD'],
    ['u -L', 'USER PID LWP %CPU NLWP %MEM VSZ RSS TTY STAT START TIME COMMAND'],
    ['u -T', 'USER PID SPID %CPU %MEM VSZ RSS TTY STAT START TIME COMMAND'],
    ['x -L', 'PID LWP TTY STAT TIME COMMAND'],
    ['x -T', 'PID SPID TTY STAT TIME COMMAND'],
  ];
  for (const [psArgs, want] of headers) {
    it(`${psArgs}: ${want}`, () => assert.equal(top(psArgs).titles.join(' '), want));
  }

  it('-l values: F from the task flags, PRI 60+priority, ADDR -, SZ in pages, WCHAN cut to 6; -F: RSS, PSR', () => {
    assert.deepEqual(top('-l').processes, [
      ['4', 'S', '0', '22311', '22289', '1', '80', '0', '-', '567', 'hrtime', '?', '00:00:00', 'sleep'],
    ]);
    assert.deepEqual(top('-F').processes, [
      ['root', '22311', '22289', '1', '567', '1440', '1', '02:51', '?', '00:00:00', 'sleep 2000'],
    ]);
    assert.deepEqual(top('-o pid,f,pri,opri,priority,intpri,psr,sz,addr,wchan').processes, [
      ['22311', '4', '19', '80', '20', '80', '1', '567', '-', 'hrtimer_nanosleep'],
    ]);
    // Not waiting in the kernel: WCHAN is -.
    assert.equal(top('-o pid,wchan', [proc({ wchan: '0', state: 'R' })]).processes[0]?.[1], '-');
  });

  it("-L and -T: a row per thread with its own id, name, state and CPU time; NLWP the process's", () => {
    const threaded = proc({
      pid: 40,
      pgid: 40,
      sid: 40,
      nlwp: 2,
      cmd: 'node server.js',
      comm: 'node',
      threads: [
        { tid: 40, comm: 'node', state: 'S', cpuTimeMs: 2000, startTimeSec: Math.floor(NOW / 1000) - 9, elapsedMs: 9_500, nice: 0, flags: 0x40_4100, priority: 20, processor: 0, wchan: 'ep_poll' },
        { tid: 41, comm: 'libuv-worker', state: 'R', cpuTimeMs: 61_000, startTimeSec: Math.floor(NOW / 1000) - 8, elapsedMs: 8_500, nice: 0, flags: 0x40_4040, priority: 20, processor: 1, wchan: '0' },
      ],
    }); // prettier-ignore
    const single = proc();
    assert.deepEqual(top('-eLf', [threaded, single]).processes, [
      ['root', '40', '22289', '40', '22', '2', '02:51', '?', '00:00:02', 'node server.js'],
      ['root', '40', '22289', '41', '99', '2', '02:51', '?', '00:01:01', 'node server.js'],
      ['root', '22311', '22289', '22311', '1', '1', '02:51', '?', '00:00:00', 'sleep 2000'],
    ]);
    assert.deepEqual(top('-T', [threaded]).processes, [
      ['40', '40', '?', '00:00:02', 'node'],
      ['40', '41', '?', '00:01:01', 'libuv-worker'],
    ]);
    // Without -L/-T a process is one row whatever its threads, its pid as its LWP.
    assert.deepEqual(top('-o pid,lwp,nlwp,comm', [threaded]).processes, [['40', '40', '2', 'node']]);
    assert.deepEqual(top('-L -o pid,lwp,stat,wchan', [threaded]).processes, [
      ['40', '40', 'Ssl', 'ep_poll'],
      ['40', '41', 'Rsl', '-'],
    ]);
  });
});

describe('ContainerMonitor.top', () => {
  /** A fake running container whose guest lists one process. */
  function fakeMonitor(running = true) {
    const calls = { top: 0, lookups: 0 };
    const sandbox = {
      top: () => {
        calls.top++;
        return Promise.resolve([proc()]);
      },
    } as unknown as RunningSandbox;
    const monitor = new ContainerMonitor({
      execTarget: (ref) => {
        calls.lookups++;
        if (!running) throw new ConflictError(`Container ${ref} is not running`);
        return { id: ref, sandbox };
      },
      inspect: (ref) => ({ id: ref, name: `/${ref}`, state: { running } }),
    });
    return { monitor, calls };
  }

  it('passes ps_args to the formatter', async () => {
    const { monitor } = fakeMonitor();
    assert.deepEqual((await monitor.top('c1', '-o pid,comm')).titles, ['PID', 'COMMAND']);
    assert.deepEqual((await monitor.top('c1')).titles, TOP_TITLES);
  });

  it('a bad -o=PID rename fails before the container is looked up; an unsupported option before the guest is asked', async () => {
    const { monitor, calls } = fakeMonitor(false);
    await assert.rejects(monitor.top('c1', '-o user=PID'), /specifying "user=PID" is not allowed/);
    assert.equal(calls.lookups, 0);
    await assert.rejects(monitor.top('c1', '-t 1'), ConflictError);
    const running = fakeMonitor();
    await assert.rejects(running.monitor.top('c1', '-t 1'), SystemError);
    assert.equal(running.calls.top, 0);
  });
});
