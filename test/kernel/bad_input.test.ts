/**
 * Bad input at the kernel's library boundary: options of the Kernel (unknown, mistyped, out of
 * range, cost models), spawn (not a program, a CPU or an affinity mask the machine does not
 * have), run limits, and the binder device's options. Each is refused with an error naming the
 * problem, before anything is allocated: afterwards the same kernel still runs a program to the
 * end and its invariants hold. A program that throws kills only its own process, with a report.
 */

import { describe, expect, it } from 'vitest';
import { Kernel, type KernelOptions } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { BinderDevice, type BinderDeviceOptions } from '../../drivers/android/binder/binder.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { expectClean } from './util.ts';

/** A program that maps, writes and reads one page: proof that the kernel still works. */
function* healthy(u: User) {
  const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  yield* u.store32(a, 0x1234);
  if ((yield* u.load32(a)) !== 0x1234) throw new Error('memory does not hold what was written');
}

function stillWorks(k: Kernel): void {
  const frames = k.pages.usedFrames;
  const t = k.spawn(healthy, { comm: 'healthy' });
  expect(k.run({ maxSteps: 1_000_000 }).reason).toBe('done');
  expect(t.exitCode).toBe(0);
  expect(k.pages.usedFrames).toBe(frames);
  expectClean(k);
}

describe('Kernel options', () => {
  const bad: [string, unknown, RegExp][] = [
    ['an unknown option (a typo must not fall back to a default)', { cpu: 4 }, /unknown kernel option "cpu"/],
    ['a string where a number belongs', { cpus: '4' }, /kernel option cpus must be a number, got string/],
    ['a number where a boolean belongs', { pcid: 1 }, /kernel option pcid must be a boolean/],
    ['null costs', { costs: null }, /kernel option costs must be an object, got null/],
    ['an array of costs', { costs: [1] }, /kernel option costs must be an object, got an array/],
    ['zero CPUs', { cpus: 0 }, /cpus must be an integer from 1 to 256, got 0/],
    ['too many CPUs', { cpus: 257 }, /cpus must be an integer from 1 to 256, got 257/],
    ['memory below 1 MiB', { memoryBytes: 4096 }, /memoryBytes must be an integer from 1 MiB/],
    ['memory above 4 GiB', { memoryBytes: 8 * 2 ** 30 }, /memoryBytes must be an integer from 1 MiB/],
    ['a NaN seed', { seed: NaN }, /seed must be a finite number, got NaN/],
    ['a zero quantum', { quantum: 0 }, /quantum must be at least 1 cycle/],
    ['a zero clock', { clockGhz: 0 }, /clockGhz must be a positive number, got 0/],
    ['a negative tick rate', { hz: -100 }, /hz must be a positive number, got -100/],
    ['an unknown kernel cost', { costs: { syscal: 10 } }, /"kernel.syscal" is not a kernel cost/],
    ['a negative kernel cost', { costs: { syscall: -1 } }, /"kernel.syscall" must be a finite number >= 0, got -1/],
    ['an infinite kernel cost', { costs: { lock: Infinity } }, /"kernel.lock" must be a finite number >= 0/],
    ['an unknown hardware cost', { hwCosts: { l1hit: 1 } }, /"hw.l1hit" is not a hardware cost/],
    ['an unknown machine option', { machine: { tlbSize: 64 } }, /unknown machine option "tlbSize"/],
  ];
  for (const [what, opts, msg] of bad) {
    it(`refuses ${what}`, () => {
      expect(() => new Kernel(opts as KernelOptions)).toThrow(msg);
    });
  }

  it('refuses options that are not an object', () => {
    expect(() => new Kernel(7 as unknown as KernelOptions)).toThrow(/kernel options must be an object/);
  });
});

describe('spawn and run', () => {
  it('refuses a program that is not a function, a CPU the machine lacks and an impossible affinity, and stays usable', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const frames = k.pages.usedFrames;
    const tasks = k.tasks.size;
    expect(() => k.spawn(42 as unknown as () => never)).toThrow(/a program is a generator function/);
    expect(() => k.spawn(healthy, { cpu: 2 })).toThrow(/task healthy: CPU 2 does not exist \(this machine has CPUs 0 to 1\)/);
    expect(() => k.spawn(healthy, { cpu: 0.5 })).toThrow(/CPU 0.5 does not exist/);
    expect(() => k.spawn(healthy, { allowed: [] })).toThrow(/allowed CPUs must be a non-empty list of CPUs 0 to 1, got \[\]/);
    expect(() => k.spawn(healthy, { allowed: [0, 7] })).toThrow(/got \[0,7\]/);
    expect(() => k.spawn(healthy, { cpu: 1, allowed: [0] })).toThrow(/CPU 1 is not among its allowed CPUs \[0\]/);
    // Nothing was allocated for the refused tasks: no address space, no task, no pid used.
    expect(k.pages.usedFrames).toBe(frames);
    expect(k.tasks.size).toBe(tasks);
    const t = k.spawn(healthy, { cpu: 1, allowed: [1] });
    expect(t.pid).toBe(1);
    expect(k.run({ maxSteps: 1_000_000 }).reason).toBe('done');
    expect(t.exitCode).toBe(0);
  });

  it('refuses run limits that are unknown, negative or not numbers; the run after them works', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    expect(() => k.run({ maxStep: 10 } as unknown as { maxSteps: number })).toThrow(/unknown run limit "maxStep"/);
    expect(() => k.run({ maxSteps: -1 })).toThrow(/maxSteps must be a non-negative number, got -1/);
    expect(() => k.run({ untilCycles: NaN })).toThrow(/untilCycles must be a non-negative number, got NaN/);
    stillWorks(k);
  });

  it('a program that throws kills only its own process, with a report naming it; the others finish', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const bad = k.spawn(
      function* thrower(u: User) {
        yield* u.getpid();
        throw new TypeError('a bug in the user program');
      },
      { comm: 'thrower' },
    );
    const good = k.spawn(healthy, { comm: 'healthy' });
    expect(k.run({ maxSteps: 1_000_000 }).reason).toBe('done');
    expect(good.exitCode).toBe(0);
    expect(bad.exitCode).not.toBe(0);
    const r = k.reports.reports.filter((x) => x.pid === bad.pid);
    expect(r).toHaveLength(1);
    expect(r[0]!.title).toMatch(/thrower\[\d+\]: program error: TypeError: a bug in the user program/);
  });
});

describe('binder device options', () => {
  const bad: [string, unknown, RegExp][] = [
    ['an unknown design', { design: { design: 'lazy' } }, /unknown binder design "lazy"/],
    ['an unknown identity variant', { design: { design: 'eager', identity: 'pid' } }, /unknown VMA identity variant "pid"/],
    ['an unknown design in perProcess', { perProcess: { server: { design: 'nope' } } }, /unknown binder design "nope"/],
    ['an unknown option', { designs: [] }, /unknown binder device option "designs"/],
    ['a path outside /dev', { path: 'binder' }, /binder device path must be a string under \/dev\/, got "binder"/],
  ];
  for (const [what, opts, msg] of bad) {
    it(`refuses ${what}, registering nothing`, () => {
      const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
      expect(() => new BinderDevice(k, opts as BinderDeviceOptions)).toThrow(msg);
      expect([...k.devices.keys()].filter((p) => p.includes('binder'))).toEqual([]);
      stillWorks(k);
    });
  }

  it('refuses a second device at the same path and keeps the first', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const first = new BinderDevice(k);
    const open = k.devices.get('/dev/binder');
    expect(() => new BinderDevice(k)).toThrow(/a device is already registered at \/dev\/binder/);
    expect(k.devices.get('/dev/binder')).toBe(open);
    expect(first.path).toBe('/dev/binder');
    new BinderDevice(k, { path: '/dev/hwbinder' });
    expect(k.devices.has('/dev/hwbinder')).toBe(true);
  });
});
