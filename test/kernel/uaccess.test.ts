/**
 * kernel/arch/x86/uaccess.ts: copy_from_user_into copies into the caller's buffer, returns
 * -EFAULT for an unmapped source, and reports a destination shorter than the copy as hardened
 * usercopy does (a BUG that kills the task), never writing past it.
 */

import { expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { copy_from_user_into } from '../../kernel/arch/x86/uaccess.ts';
import { EFAULT } from '../../kernel/errno.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';

it('copy_from_user_into: copies, faults with -EFAULT, and a too-short buffer is a usercopy BUG', () => {
  const k = new Kernel({ cpus: 1, memoryBytes: 8 << 20 });
  const got: (number | string)[] = [];
  const t = k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    yield* u.write(a + 4090, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    const to = new Uint8Array(10).fill(0xee);
    got.push(yield* u.call('copy', (kk) => copy_from_user_into(kk, to, a + 4090, 8)));
    got.push([...to].join(','));
    // (A negative result would become a SyscallError on the way out: report it as a flag.)
    got.push(yield* u.call('copy', function* (kk) {
      return (yield* copy_from_user_into(kk, to, 0x1000, 4)) === -EFAULT ? 1 : 0;
    }));
    const small = new Uint8Array(4);
    yield* u.call('copy', (kk) => copy_from_user_into(kk, small, a, 8));
    got.push('not reached');
  });
  k.run({ maxSteps: 100_000 });
  expect(got).toEqual([0, '1,2,3,4,5,6,7,8,238,238', 1]);
  expect(t.killedBy?.title).toBe('usercopy: Kernel memory overwrite attempt detected');
  expect(t.killedBy?.text).toMatch(/to a 4-byte buffer \(offset 0, size 8\)/);
});
