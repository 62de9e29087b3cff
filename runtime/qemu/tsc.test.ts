import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { tscKhzFromCpuinfo, tscKhzFromKernelLog } from './tsc';

describe('host TSC rate', () => {
  it('prefers the refined calibration in the kernel log', () => {
    const log = [
      '6,10,0,-;tsc: Fast TSC calibration using PIT',
      '6,11,71,-;tsc: Detected 2445.428 MHz processor',
      '6,400,1200000,-;tsc: Refined TSC clocksource calibration: 2445.399 MHz',
    ].join('\n');
    assert.equal(tscKhzFromKernelLog(log), 2445399);
    assert.equal(tscKhzFromKernelLog(log.split('\n').slice(0, 2).join('\n')), 2445428);
    assert.equal(tscKhzFromKernelLog('nothing here'), undefined);
  });

  it('falls back to cpu MHz when the CPU has a TSC', () => {
    const cpuinfo = 'processor\t: 0\ncpu MHz\t\t: 2445.428\nflags\t\t: fpu tsc msr constant_tsc\n';
    assert.equal(tscKhzFromCpuinfo(cpuinfo), 2445428);
    assert.equal(tscKhzFromCpuinfo(cpuinfo.replace(' tsc ', ' ')), undefined);
    assert.equal(tscKhzFromCpuinfo('flags : tsc\n'), undefined);
  });
});
