import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  humanSize,
  layerLine,
  messageLine,
  progressBar,
  progressLine,
  ProgressThrottle,
  shortLayerId,
} from './progress';

describe('humanSize (go-units HumanSize)', () => {
  it('formats with 4 significant digits and decimal units', () => {
    assert.equal(humanSize(0), '0B');
    assert.equal(humanSize(512), '512B');
    assert.equal(humanSize(999), '999B');
    assert.equal(humanSize(1000), '1kB');
    assert.equal(humanSize(36445), '36.45kB');
    assert.equal(humanSize(32768), '32.77kB');
    assert.equal(humanSize(3001130), '3.001MB');
    assert.equal(humanSize(1982464), '1.982MB');
    assert.equal(humanSize(1_500_000_000), '1.5GB');
  });
});

describe('progressBar (JSONProgress.String at the daemon width)', () => {
  it('matches what dockerd sent in recorded traffic', () => {
    // from shared/reference/client-traffic/pull_full.log
    assert.equal(progressBar(36445, 3001130), '[>' + ' '.repeat(50) + ']  36.45kB/3.001MB');
    assert.equal(progressBar(32768, 3001130), '[>' + ' '.repeat(50) + ']  32.77kB/3.001MB');
    assert.equal(progressBar(3001130, 3001130), '[' + '='.repeat(50) + '>]  3.001MB/3.001MB');
  });

  it('handles the edges', () => {
    assert.equal(progressBar(0, 0), '');
    assert.equal(progressBar(1500, 0), '   1.5kB');
    assert.equal(progressBar(1500, 1000), '[' + '='.repeat(50) + '>]    1.5kB');
    assert.equal(progressBar(500, 1000), '[' + '='.repeat(25) + '>' + ' '.repeat(25) + ']     500B/1kB');
  });
});

describe('progress lines', () => {
  it("have dockerd's shapes and key order", () => {
    assert.equal(
      JSON.stringify(messageLine('Pulling from big', 'v1')),
      '{"status":"Pulling from big","id":"v1"}',
    );
    assert.equal(
      JSON.stringify(layerLine('Pull complete', '67fdf85e5cbd')),
      '{"status":"Pull complete","progressDetail":{},"id":"67fdf85e5cbd"}',
    );
    assert.equal(
      JSON.stringify(progressLine('Downloading', '67fdf85e5cbd', 36445, 3001130)),
      '{"status":"Downloading","progressDetail":{"current":36445,"total":3001130},"progress":"[>                                                  ]  36.45kB/3.001MB","id":"67fdf85e5cbd"}',
    );
    assert.equal(JSON.stringify(messageLine('Digest: sha256:x')), '{"status":"Digest: sha256:x"}');
  });

  it('shortLayerId is the first 12 hex digits', () => {
    assert.equal(shortLayerId('sha256:67fdf85e5cbd0123456789'), '67fdf85e5cbd');
  });
});

describe('ProgressThrottle', () => {
  it('emits the first update, then at most one per interval, and forced ones', () => {
    let now = 0;
    const seen: number[] = [];
    const t = new ProgressThrottle(
      (n) => seen.push(n),
      100,
      () => now,
    );
    t.update(1);
    t.update(2);
    now = 50;
    t.update(3);
    now = 100;
    t.update(4);
    t.update(5, true);
    assert.deepEqual(seen, [1, 4, 5]);
  });
});
