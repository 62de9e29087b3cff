import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidParameterError } from '../../common/errdefs';
import {
  type QemuArgsOptions,
  buildKernelCmdline,
  buildQemuArgs,
  hostForwardOption,
  qemuOptValue,
} from './cmdline';

const RUN = '/run/capsule/vm/0123456789ab';

function vmOptions(overrides: Partial<QemuArgsOptions> = {}): QemuArgsOptions {
  return {
    accel: 'tcg',
    memoryMiB: 256,
    vcpus: 2,
    kernelPath: '/var/cache/capsule/guest/vmlinuz',
    initrdPath: '/var/cache/capsule/guest/initrd.img',
    agentDiskPath: '/var/cache/capsule/guest/agent.img',
    consoleLogPath: `${RUN}/console.log`,
    name: 'capsule-0123456789ab',
    hostname: 'web1',
    tscKhz: 2445428,
    agentSocketPath: `${RUN}/agent.sock`,
    qmpSocketPath: `${RUN}/qmp.sock`,
    virtiofsSocketPath: `${RUN}/virtiofsd.sock`,
    network: { hostForwards: [{ proto: 'tcp', hostAddr: '127.0.0.1', hostPort: 8080, guestPort: 80 }] },
    entropy: true,
    ...overrides,
  };
}

const KERNEL_BASE = 'console=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check lpj=5000000 quiet';

describe('buildQemuArgs', () => {
  it('builds the full argv of a TCG VM', () => {
    assert.deepEqual(buildQemuArgs(vmOptions()), [
      '-name',
      'capsule-0123456789ab',
      '-M',
      'microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem',
      '-global',
      'virtio-mmio.force-legacy=false',
      '-accel',
      'tcg,thread=multi',
      '-m',
      '256M',
      '-object',
      'memory-backend-memfd,id=mem,size=256M,share=on',
      '-smp',
      '2',
      '-nodefaults',
      '-no-user-config',
      '-nographic',
      '-no-reboot',
      '-kernel',
      '/var/cache/capsule/guest/vmlinuz',
      '-initrd',
      '/var/cache/capsule/guest/initrd.img',
      '-append',
      `${KERNEL_BASE} capsule.accel=tcg capsule.hostname=web1 tsc_early_khz=2445428`,
      '-chardev',
      `file,id=console,path=${RUN}/console.log`,
      '-serial',
      'chardev:console',
      '-object',
      'rng-random,id=rng0,filename=/dev/urandom',
      '-device',
      'virtio-rng-device,rng=rng0',
      '-chardev',
      `socket,id=agent,path=${RUN}/agent.sock,server=on,wait=off`,
      '-device',
      'virtio-serial-device,id=vserial0',
      '-device',
      'virtserialport,id=agent0,chardev=agent,name=agent.0',
      '-drive',
      'file=/var/cache/capsule/guest/agent.img,if=none,id=agentdisk,format=raw,readonly=on',
      '-device',
      'virtio-blk-device,drive=agentdisk,serial=capsule-agent',
      '-chardev',
      `socket,id=virtiofs,path=${RUN}/virtiofsd.sock`,
      '-device',
      'vhost-user-fs-device,chardev=virtiofs,tag=capsule',
      '-netdev',
      'user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,ipv6=off,hostfwd=tcp:127.0.0.1:8080-:80',
      '-device',
      'virtio-net-device,netdev=net0',
      '-chardev',
      `socket,id=qmp,path=${RUN}/qmp.sock,server=on,wait=off`,
      '-mon',
      'chardev=qmp,mode=control',
      '-sandbox',
      'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
    ]);
  });

  it('uses KVM with the host CPU and no TSC hint', () => {
    const argv = buildQemuArgs(vmOptions({ accel: 'kvm' }));
    const i = argv.indexOf('-accel');
    assert.deepEqual(argv.slice(i, i + 4), ['-accel', 'kvm', '-cpu', 'host']);
    assert.equal(argv[argv.indexOf('-append') + 1], `${KERNEL_BASE} capsule.accel=kvm capsule.hostname=web1`);
  });

  it('sets the TCG translation-cache size when asked', () => {
    const argv = buildQemuArgs(vmOptions({ tcgTbSizeMiB: 128 }));
    assert.equal(argv[argv.indexOf('-accel') + 1], 'tcg,thread=multi,tb-size=128');
  });

  it('builds a bare probe VM: kernel, initramfs and console only', () => {
    const argv = buildQemuArgs({
      accel: 'kvm',
      memoryMiB: 256,
      vcpus: 1,
      kernelPath: '/k',
      initrdPath: '/i',
      consoleLogPath: '/tmp/p/console.log',
      kernelArgs: ['capsule.probe=1'],
    });
    assert.equal(argv[argv.indexOf('-append') + 1], `${KERNEL_BASE} capsule.accel=kvm capsule.probe=1`);
    for (const absent of [
      '-netdev',
      '-drive',
      '-mon',
      'vhost-user-fs-device',
      'virtserialport',
      'virtio-rng',
    ]) {
      assert.ok(!argv.some((a) => a.includes(absent)), absent);
    }
    assert.ok(argv.includes('-sandbox'));
  });

  it('escapes commas in paths', () => {
    const argv = buildQemuArgs(
      vmOptions({ agentDiskPath: '/data/a,b/agent.img', consoleLogPath: '/r/c,on.log' }),
    );
    assert.ok(argv.includes('file=/data/a,,b/agent.img,if=none,id=agentdisk,format=raw,readonly=on'));
    assert.ok(argv.includes('file,id=console,path=/r/c,,on.log'));
  });

  it('refuses socket paths longer than sun_path', () => {
    const long = '/run/' + 'x'.repeat(110) + '/agent.sock';
    assert.throws(() => buildQemuArgs(vmOptions({ agentSocketPath: long })), InvalidParameterError);
  });

  it('refuses bad sizes, hostnames and kernel arguments', () => {
    assert.throws(() => buildQemuArgs(vmOptions({ memoryMiB: 16 })), InvalidParameterError);
    assert.throws(() => buildQemuArgs(vmOptions({ vcpus: 0 })), InvalidParameterError);
    assert.throws(() => buildQemuArgs(vmOptions({ hostname: 'a b' })), InvalidParameterError);
    assert.throws(() => buildQemuArgs(vmOptions({ hostname: '-x' })), InvalidParameterError);
    assert.throws(
      () => buildQemuArgs(vmOptions({ kernelArgs: ['init=/bin/sh quiet'] })),
      InvalidParameterError,
    );
    assert.throws(() => buildQemuArgs(vmOptions({ kernelArgs: [''] })), InvalidParameterError);
    assert.throws(() => buildQemuArgs(vmOptions({ tscKhz: -1 })), InvalidParameterError);
  });
});

describe('hostForwardOption', () => {
  it('formats tcp and udp forwards; 0.0.0.0 and "" mean every address', () => {
    assert.equal(
      hostForwardOption({ proto: 'udp', hostAddr: '0.0.0.0', hostPort: 5353, guestPort: 53 }),
      'hostfwd=udp::5353-:53',
    );
    assert.equal(
      hostForwardOption({ proto: 'tcp', hostAddr: '', hostPort: 1, guestPort: 65535 }),
      'hostfwd=tcp::1-:65535',
    );
  });

  it('refuses what would inject options or that slirp cannot do', () => {
    const base = { proto: 'tcp' as const, hostAddr: '127.0.0.1', hostPort: 80, guestPort: 80 };
    assert.throws(
      () => hostForwardOption({ ...base, hostAddr: '127.0.0.1,restrict=on' }),
      InvalidParameterError,
    );
    assert.throws(() => hostForwardOption({ ...base, hostAddr: '::1' }), InvalidParameterError);
    assert.throws(() => hostForwardOption({ ...base, hostPort: 0 }), InvalidParameterError);
    assert.throws(() => hostForwardOption({ ...base, guestPort: 70000 }), InvalidParameterError);
    assert.throws(() => hostForwardOption({ ...base, proto: 'sctp' as 'tcp' }), InvalidParameterError);
  });
});

describe('buildKernelCmdline / qemuOptValue', () => {
  it('appends the caller arguments last', () => {
    assert.equal(
      buildKernelCmdline(vmOptions({ hostname: undefined, kernelArgs: ['a=1', 'b'] })),
      `${KERNEL_BASE} capsule.accel=tcg tsc_early_khz=2445428 a=1 b`,
    );
  });

  it('refuses control characters', () => {
    assert.throws(() => qemuOptValue('/tmp/a\nb'), InvalidParameterError);
    assert.equal(qemuOptValue('a,b,,c'), 'a,,b,,,,c');
  });
});
