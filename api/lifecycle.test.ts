/**
 * Update, rename, prune, resize, restart policies and events on the wire: statuses, messages and
 * JSON shapes as the reference dockerd 20.10 answers them (checked side by side with
 * shared/tools/reference-dockerd), then the same through the real docker CLI.
 */
import assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dockerCliMissing, runDockerCli, type CliResult } from './testing/cli';
import { BUSYBOX, startHarness, type Harness } from './testing/harness';
import { RawConnection, eventually, request } from './testing/http';

const noCli = dockerCliMissing;

let h: Harness;
let configDir: string;

before(async () => {
  h = await startHarness({ images: [BUSYBOX] });
  configDir = path.join(h.dir, 'docker-config');
  await fs.mkdir(configDir);
});
after(async () => {
  await h.close();
});

async function create(body: Record<string, unknown>, name?: string): Promise<string> {
  const reply = await request(h.socketPath, 'POST', `/containers/create${name ? `?name=${name}` : ''}`, {
    body: { Image: 'busybox', ...body },
  });
  assert.equal(reply.status, 201, reply.text);
  return reply.json<{ Id: string }>().Id;
}

async function post(
  url: string,
  body?: unknown,
  headers?: Record<string, string>,
): Promise<{ status: number; text: string }> {
  const r = await request(h.socketPath, 'POST', url, { body, headers });
  return { status: r.status, text: r.text };
}

const message = (m: string): string => JSON.stringify({ message: m }) + '\n';

describe('POST /containers/{id}/update', () => {
  it('answers 200 {"Warnings":null} and reports the new policy in inspect', async () => {
    const id = await create({ Cmd: ['true'] }, 'upd');
    assert.deepEqual(
      await post('/containers/upd/update', { RestartPolicy: { Name: 'on-failure', MaximumRetryCount: 3 } }),
      {
        status: 200,
        text: '{"Warnings":null}\n',
      },
    );
    const inspect = await request(h.socketPath, 'GET', `/containers/${id}/json`);
    assert.deepEqual(inspect.json<{ HostConfig: { RestartPolicy: unknown } }>().HostConfig.RestartPolicy, {
      Name: 'on-failure',
      MaximumRetryCount: 3,
    });
  });

  it('fails like dockerd: 400 for bad policies and Content-Type, 409 conflicts, 404, 500 for bodies Go cannot decode', async () => {
    const id = await create({ Cmd: ['true'] }, 'upd2');
    const cases: Array<[unknown, number, string, Record<string, string>?]> = [
      [{ RestartPolicy: { Name: 'bogus' } }, 400, "invalid restart policy 'bogus'"],
      [
        { RestartPolicy: { Name: 'always', MaximumRetryCount: 3 } },
        400,
        "maximum retry count cannot be used with restart policy 'always'",
      ],
      [
        { RestartPolicy: { Name: 'on-failure', MaximumRetryCount: -1 } },
        400,
        'maximum retry count cannot be negative',
      ],
      [
        { Memory: 104857600 },
        409,
        `Cannot update container ${id}: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time`,
      ],
      [
        { Memory: 'abc' },
        500,
        'json: cannot unmarshal string into Go struct field UpdateConfig.Memory of type int64',
      ],
      [[], 500, 'json: cannot unmarshal array into Go value of type container.UpdateConfig'],
      [Buffer.from('garbage'), 500, "invalid character 'g' looking for beginning of value"],
      [Buffer.alloc(0), 500, 'EOF'],
      [
        Buffer.from('{}'),
        400,
        "Content-Type specified (application/x-www-form-urlencoded) must be 'application/json'",
        { 'Content-Type': 'application/x-www-form-urlencoded' },
      ],
    ];
    for (const [body, status, text, headers] of cases) {
      const r = await post(
        '/containers/upd2/update',
        body,
        headers ?? { 'Content-Type': 'application/json' },
      );
      assert.deepEqual(r, { status, text: message(text) }, JSON.stringify(body));
    }
    assert.deepEqual(await post('/containers/nosuch/update', {}), {
      status: 404,
      text: message('No such container: nosuch'),
    });
    assert.deepEqual(await post('/containers/upd2/update', null), {
      status: 200,
      text: '{"Warnings":null}\n',
    });
  });
});

describe('POST /containers/{id}/rename', () => {
  it('204; 409 name in use; 400 same name, invalid or empty; 404', async () => {
    await create({ Cmd: ['true'] }, 'ren1');
    const other = await create({ Cmd: ['true'] }, 'ren2');
    assert.deepEqual(await post('/containers/ren1/rename?name=ren3'), { status: 204, text: '' });
    assert.deepEqual(await post('/containers/ren3/rename?name=ren2'), {
      status: 409,
      text: message(
        `Error when allocating new name: Conflict. The container name "/ren2" is already in use by container "${other}". You have to remove (or rename) that container to be able to reuse that name.`,
      ),
    });
    assert.deepEqual(await post('/containers/ren3/rename?name=ren3'), {
      status: 400,
      text: message('Renaming a container with the same name as its current name'),
    });
    assert.deepEqual(await post('/containers/ren3/rename?name=a'), {
      status: 400,
      text: message(
        'Error when allocating new name: Invalid container name (/a), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed',
      ),
    });
    assert.deepEqual(await post('/containers/ren3/rename'), {
      status: 400,
      text: message('Neither old nor new names may be empty'),
    });
    assert.deepEqual(await post('/containers/nosuch/rename?name=zz'), {
      status: 404,
      text: message('No such container: nosuch'),
    });
  });
});

describe('POST /containers/prune', () => {
  it('{"ContainersDeleted":[…]|null,"SpaceReclaimed":N}; 400 unknown filter; 500 bad until', async () => {
    const keep = await create({ Cmd: ['true'], Labels: { keep: 'yes' } }, 'prune-keep');
    const filters = (f: unknown): string => encodeURIComponent(JSON.stringify(f));
    const none = await post(`/containers/prune?filters=${filters({ label: ['keep=no'] })}`);
    assert.deepEqual(none, { status: 200, text: '{"ContainersDeleted":null,"SpaceReclaimed":0}\n' });
    assert.deepEqual(await post(`/containers/prune?filters=${filters({ status: ['exited'] })}`), {
      status: 400,
      text: message("Invalid filter 'status'"),
    });
    assert.deepEqual(await post(`/containers/prune?filters=${filters({ until: ['bogus'] })}`), {
      status: 500,
      text: message('failed to parse value as time or duration: "bogus"'),
    });
    const some = await post(`/containers/prune?filters=${filters({ label: { keep: true } })}`);
    assert.deepEqual(JSON.parse(some.text), { ContainersDeleted: [keep], SpaceReclaimed: 0 });
  });
});

describe('POST /containers/{id}/resize', () => {
  it('requires h and w (strconv.Atoi errors are 400)', async () => {
    const id = await create({ Cmd: ['sleep', '100'] });
    await post(`/containers/${id}/start`);
    assert.deepEqual(await post(`/containers/${id}/resize?h=10&w=20`), { status: 200, text: '' });
    assert.deepEqual(await post(`/containers/${id}/resize?h=abc&w=20`), {
      status: 400,
      text: message('strconv.Atoi: parsing "abc": invalid syntax'),
    });
    assert.deepEqual(await post(`/containers/${id}/resize`), {
      status: 400,
      text: message('strconv.Atoi: parsing "": invalid syntax'),
    });
    await request(h.socketPath, 'DELETE', `/containers/${id}?force=1`);
  });
});

describe('GET /events', () => {
  it('replays buffered events between since and until, sorted attributes, exact timeNano, then ends', async () => {
    const since = Date.now() / 1000 - 1;
    const id = await create({ Cmd: ['sh', '-c', 'exit 3'], Labels: { team: 'x' } }, 'evt-replay');
    await post(`/containers/${id}/start`);
    await request(h.socketPath, 'POST', `/containers/${id}/wait`);
    const until = (Date.now() / 1000 + 0.001).toFixed(9);
    const filters = encodeURIComponent(JSON.stringify({ container: ['evt-rep'], event: ['create', 'die'] }));
    const r = await request(h.socketPath, 'GET', `/events?since=${since}&until=${until}&filters=${filters}`);
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/json');
    const lines = r.text.trim().split('\n');
    assert.equal(lines.length, 2, r.text);
    assert.match(
      lines[1] ?? '',
      new RegExp(
        `^\\{"status":"die","id":"${id}","from":"busybox","Type":"container","Action":"die",` +
          `"Actor":\\{"ID":"${id}","Attributes":\\{"exitCode":"3","image":"busybox","name":"evt-replay","team":"x"\\}\\},` +
          `"scope":"local","time":(\\d+),"timeNano":(\\d+)\\}$`,
      ),
    );
    const m = /"time":(\d+),"timeNano":(\d+)/.exec(lines[1] ?? '');
    assert.equal(BigInt(m?.[2] ?? '0') / 1_000_000_000n, BigInt(m?.[1] ?? '-1'));
    assert.notEqual((m?.[2] ?? '').slice(-3), '000', 'timeNano keeps its nanoseconds');
  });

  it('a prune event has status but no id or from; label filters need every label', async () => {
    const since = (Date.now() / 1000).toFixed(3);
    await post('/containers/prune');
    const r = await request(
      h.socketPath,
      'GET',
      `/events?since=${since}&until=${(Date.now() / 1000 + 0.001).toFixed(3)}`,
    );
    assert.match(
      r.text,
      /\{"status":"prune","Type":"container","Action":"prune","Actor":\{"ID":"","Attributes":\{"reclaimed":"\d+"\}\}/,
    );
  });

  it('since/until errors: since after until is 400, garbage is 500 with strconv text', async () => {
    const r1 = await request(h.socketPath, 'GET', '/events?since=200&until=100');
    assert.deepEqual(
      [r1.status, r1.text],
      [400, message('`since` time (200) cannot be after `until` time (100)')],
    );
    const r2 = await request(h.socketPath, 'GET', '/events?since=abc');
    assert.deepEqual([r2.status, r2.text], [500, message('strconv.ParseInt: parsing "abc": invalid syntax')]);
  });

  it('streams live events through filters, headers first, and stays open', async () => {
    const conn = new RawConnection(h.socketPath);
    const filters = encodeURIComponent(JSON.stringify({ label: ['live=1'], type: ['container'] }));
    conn.write(`GET /v1.41/events?filters=${filters} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await conn.until((d) => d.includes('\r\n\r\n'));
    await create({ Cmd: ['true'] }, 'not-labelled');
    const id = await create({ Cmd: ['true'], Labels: { live: '1' } }, 'labelled');
    await post('/containers/labelled/rename?name=relabelled');
    await conn.until((d) => d.includes('"rename"'));
    const text = conn.split().body.toString();
    assert.doesNotMatch(text, /not-labelled/);
    assert.match(text, new RegExp(`"Action":"create","Actor":\\{"ID":"${id}"`));
    assert.match(
      text,
      /"Attributes":\{"image":"busybox","live":"1","name":"relabelled","oldName":"\/labelled"\}/,
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(conn.ended, false);
    conn.close();
  });
});

describe('restart policies on the wire', () => {
  it('on-failure:2: RestartCount 2, State.Restarting while waiting, "Restarting (1) … ago" in ps', async () => {
    const id = await create({
      Cmd: ['sh', '-c', 'exit 1'],
      HostConfig: { RestartPolicy: { Name: 'on-failure', MaximumRetryCount: 2 } },
    });
    await post(`/containers/${id}/start`);
    const statuses = new Set<string>();
    const final = await eventually(async () => {
      const list = await request(
        h.socketPath,
        'GET',
        `/containers/json?all=1&filters=${encodeURIComponent(JSON.stringify({ id: [id] }))}`,
      );
      const [summary] = list.json<Array<{ State: string; Status: string }>>();
      if (summary) statuses.add(`${summary.State}|${summary.Status}`);
      const inspect = await request(h.socketPath, 'GET', `/containers/${id}/json`);
      const c = inspect.json<{ RestartCount: number; State: { Status: string; Restarting: boolean } }>();
      return c.RestartCount === 2 && c.State.Status === 'exited' ? c : undefined;
    });
    assert.equal(final.State.Restarting, false);
    assert.ok(
      [...statuses].some((s) => /^restarting\|Restarting \(1\) Less than a second ago$/.test(s)),
      [...statuses].join(', '),
    );
  });
});

function docker(args: string[]): Promise<CliResult> {
  return runDockerCli({ socketPath: h.socketPath, configDir }, args, { timeoutMs: 8000 });
}

describe('docker CLI: update, rename, container prune, events, restart policies', { skip: noCli }, () => {
  it('docker run --restart on-failure:2 runs three times; docker events --since/--until --filter shows each die', async () => {
    const r = await docker([
      'run',
      '-d',
      '--name',
      'cli-onfail',
      '--restart',
      'on-failure:2',
      '-l',
      'suite=cli',
      'busybox',
      'sh',
      '-c',
      'echo run; exit 1',
    ]);
    assert.equal(r.code, 0, r.stderr);
    await eventually(async () => {
      const i = await docker(['inspect', '-f', '{{.State.Status}} {{.RestartCount}}', 'cli-onfail']);
      return i.stdout.trim() === 'exited 2' ? true : undefined;
    });
    const logs = await docker(['logs', 'cli-onfail']);
    assert.equal(logs.stdout, 'run\nrun\nrun\n');
    const events = await docker([
      'events',
      '--since',
      '1m',
      // The CLI turns durations into whole seconds (as dockerd's GetTimestamp): "0s" would end
      // before the events of this second; a fractional timestamp goes through verbatim.
      '--until',
      (Date.now() / 1000 + 0.05).toFixed(3),
      '--filter',
      'container=cli-onfail',
      '--filter',
      'event=die',
      '--filter',
      'label=suite=cli',
      '--format',
      '{{.Status}} {{.Actor.Attributes.exitCode}} {{.Actor.Attributes.name}}',
    ]);
    assert.equal(events.code, 0, events.stderr);
    assert.equal(events.stdout, 'die 1 cli-onfail\n'.repeat(3));
    // docker wait answers with the last exit.
    const wait = await docker(['wait', 'cli-onfail']);
    assert.equal(wait.stdout, '1\n');
  });

  it('docker update --restart, docker rename, docker container prune', async () => {
    assert.equal((await docker(['create', '--name', 'cli-upd', 'busybox', 'true'])).code, 0);
    const upd = await docker(['update', '--restart', 'unless-stopped', 'cli-upd']);
    assert.deepEqual([upd.code, upd.stdout], [0, 'cli-upd\n']);
    const policy = await docker(['inspect', '-f', '{{json .HostConfig.RestartPolicy}}', 'cli-upd']);
    assert.equal(policy.stdout, '{"Name":"unless-stopped","MaximumRetryCount":0}\n');
    const bad = await docker(['update', '--restart', 'always:3', 'cli-upd']);
    assert.notEqual(bad.code, 0);
    assert.equal((await docker(['rename', 'cli-upd', 'cli-renamed'])).code, 0);
    const conflict = await docker(['rename', 'cli-renamed', 'cli-onfail']);
    assert.equal(conflict.code, 1);
    assert.match(
      conflict.stderr,
      /Error when allocating new name: Conflict\. The container name "\/cli-onfail" is already in use/,
    );
    const prune = await docker(['container', 'prune', '-f', '--filter', 'label=suite=cli']);
    assert.equal(prune.code, 0, prune.stderr);
    assert.match(prune.stdout, /^Deleted Containers:\n[0-9a-f]{64}\n\nTotal reclaimed space: 0B\n$/);
    const left = await docker(['ps', '-a', '--filter', 'name=cli-', '--format', '{{.Names}}']);
    assert.equal(left.stdout, 'cli-renamed\n');
  });

  it('docker stop of an always container keeps it stopped; docker ps shows Exited', async () => {
    assert.equal(
      (await docker(['run', '-d', '--name', 'cli-always', '--restart', 'always', 'busybox', 'sleep', '100']))
        .code,
      0,
    );
    const stop = await docker(['stop', 'cli-always']);
    assert.deepEqual([stop.code, stop.stdout], [0, 'cli-always\n']);
    await new Promise((r) => setTimeout(r, 200));
    const ps = await docker(['ps', '-a', '--filter', 'name=cli-always', '--format', '{{.Status}}']);
    assert.match(ps.stdout, /^Exited \(143\) (Less than a second|1 second) ago\n$/);
  });
});
