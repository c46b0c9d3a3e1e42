/**
 * kernel/workqueue.ts — deferred work (kernel/workqueue.c, reduced to one unbound worker): work
 * items are generator functions run one after another by a kernel thread ("kworker/u:0"), which
 * sleeps when the queue is empty. mmput_async and binder's deferred release use it.
 */

import type { Kernel } from './kernel.ts';
import type { KGen, Task } from './sched/core.ts';
import { WaitQueue } from './sched/wait.ts';

export interface WorkItem {
  name: string;
  fn: () => KGen;
}

export class Workqueue {
  private readonly items: WorkItem[] = [];
  private readonly wq = new WaitQueue('worker_thread');
  private worker: Task | null = null;
  done = 0;

  constructor(private readonly k: Kernel) {}

  /** queue_work: run `fn` later in the worker's context. */
  queue(name: string, fn: () => KGen): void {
    this.items.push({ name, fn });
    if (!this.worker || this.worker.state === 'dead') this.spawn();
    else this.wq.wakeOne(this.k);
  }

  get pending(): number {
    return this.items.length;
  }

  private spawn(): void {
    const self = this;
    this.worker = this.k.createTask({ comm: 'kworker/u:0', kthread: true }, function* () {
      // The worker exits when idle so a finished system goes quiet; queue() restarts it.
      while (self.items.length > 0) {
        const w = self.items.shift()!;
        yield* w.fn();
        self.done++;
      }
    });
  }
}
