/**
 * kernel/ids.ts: the numbers a kernel gives its objects are per kernel, so a second kernel in the
 * same process (a sweep's next job, a test) numbers its mms, inodes, VMAs and binder objects as the
 * first did, and the same seed gives the same output whatever ran before it.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { KernelIds } from '../../kernel/ids.ts';
import { runScenario } from '../../src/experiments/attack.ts';

describe('KernelIds', () => {
  it('numbers each named sequence from 1, independently', () => {
    const ids = new KernelIds();
    expect([ids.next('a'), ids.next('a'), ids.next('b'), ids.next('a')]).toEqual([1, 2, 1, 3]);
    expect(new KernelIds().next('a')).toBe(1);
  });

  it('two kernels built one after the other number their mms, inodes and VMAs alike', () => {
    const numbers = () => {
      const k = new Kernel({ cpus: 1, memoryBytes: 8 << 20 });
      const got: number[] = [];
      k.spawn(function* (u) {
        yield* u.mmap(0, 4096, 3, 0x22);
      });
      k.run({ maxSteps: 10_000 });
      for (const mm of k.mms) got.push(mm.ctx_id);
      for (const mm of k.mms) for (const v of mm.vmas()) got.push(v.id);
      got.push(k.ids.ino, k.ids.file, k.ids.mapping, k.ids.task);
      return got;
    };
    const first = numbers();
    expect(first.length).toBeGreaterThan(4);
    expect(numbers()).toEqual(first);
  });

  it('a security scenario run twice in one process gives the same evidence (mm numbers included)', () => {
    const run = () => runScenario({ design: 'eager-writelock', variant: 'none', scenario: '1c' });
    const a = JSON.stringify(run());
    expect(a).toMatch(/mm \d+ \(receiver/);
    expect(JSON.stringify(run())).toBe(a);
  });
});
