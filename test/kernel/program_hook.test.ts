/**
 * Kernel.programHook: every user program the kernel starts (spawn, fork, clone) passes through
 * it with its process and whether it is a new thread, and the program it returns is the one run.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { Program, User } from '../../kernel/uapi.ts';

describe('Kernel.programHook', () => {
  it('sees spawn, fork and clone, and runs the program it returns', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20 });
    const seen: string[] = [];
    const ran: string[] = [];
    k.programHook = (program: Program, started) => {
      seen.push(`${started.thread ? 'thread' : 'process'} ${started.tgid} ${started.comm}`);
      return function* (u: User) {
        ran.push(`${u.pid}/${u.tid} begins`);
        const r = yield* program(u);
        ran.push(`${u.pid}/${u.tid} ends`);
        return r;
      };
    };
    const parent = k.spawn(
      function* parent(u: User) {
        const child = yield* u.fork(function* (v: User) {
          yield* v.sleep(1000);
        });
        yield* u.clone(function* (v: User) {
          yield* v.sleep(1000);
        }, { comm: 'worker' });
        yield* u.wait(child);
      },
      { cpu: 0 },
    );
    k.run({ maxSteps: 100_000 });
    expect(parent.exitCode).toBe(0);
    const pid = parent.tgid;
    expect(seen).toEqual([`process ${pid} parent`, `process ${pid + 1} parent`, `thread ${pid} worker`]);
    // Every program ran inside its wrapper, begin to end.
    expect(ran.filter((l) => l.endsWith('begins'))).toHaveLength(3);
    expect(ran.filter((l) => l.endsWith('ends'))).toHaveLength(3);
    expect(ran[0]).toBe(`${pid}/${pid} begins`);
  });
});
