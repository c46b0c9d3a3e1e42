/**
 * kernel/sched/wait.ts — wait queues (kernel/sched/wait.c): a task that must wait puts itself
 * on a queue, marks itself sleeping and yields; a waker takes tasks off in FIFO order and makes
 * them runnable no earlier than its own clock.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen, Task } from './core.ts';

export class WaitQueue {
  private readonly q: Task[] = [];

  constructor(readonly name: string) {}

  get length(): number {
    return this.q.length;
  }

  has(t: Task): boolean {
    return this.q.includes(t);
  }

  /** Sleep on this queue once (prepare_to_wait + schedule). The caller re-checks its condition. */
  *sleep(k: Kernel, reason = this.name): KGen {
    const t = k.current;
    if (!t) throw new Error(`sleeping on ${this.name} outside task context`);
    t.state = 'sleeping';
    t.since = k.now();
    this.q.push(t);
    yield { kind: 'sleep', reason };
  }

  /** Sleep until `cond()` holds (wait_event). */
  *waitEvent(k: Kernel, cond: () => boolean, reason = this.name): KGen {
    while (!cond()) yield* this.sleep(k, reason);
  }

  /** Wake the first waiter; returns it. */
  wakeOne(k: Kernel): Task | null {
    const t = this.q.shift();
    if (t) k.wake(t);
    return t ?? null;
  }

  /** Wake every waiter. */
  wakeAll(k: Kernel): number {
    const n = this.q.length;
    while (this.q.length) k.wake(this.q.shift()!);
    return n;
  }

  /** Take a specific task off the queue (it was woken some other way). */
  remove(t: Task): void {
    const i = this.q.indexOf(t);
    if (i >= 0) this.q.splice(i, 1);
  }

  waiters(): readonly Task[] {
    return this.q;
  }
}
