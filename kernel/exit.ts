/**
 * kernel/exit.ts — task exit (kernel/exit.c): exit_mm drops the task's hold on its address space
 * (the last holder tears it down), the file table is released with the last thread of a process,
 * and waiters are told. Also the fd table (include/linux/fdtable.h), shared by a process's
 * threads and copied by fork.
 */

import type { Kernel } from './kernel.ts';
import type { KGen, Task } from './sched/core.ts';
import { WaitQueue } from './sched/wait.ts';
import type { File } from './fs/file.ts';
import { mmput } from './fork.ts';
import { EBADF, EMFILE } from './errno.ts';

export const NR_OPEN_DEFAULT = 1024;

/** files_struct: the fd table of a process. */
export class FdTable {
  readonly fds: (File | null)[] = [];

  install(f: File): number {
    let fd = this.fds.indexOf(null);
    if (fd < 0) fd = this.fds.length;
    if (fd >= NR_OPEN_DEFAULT) return -EMFILE;
    this.fds[fd] = f;
    return fd;
  }

  get(fd: number): File | null {
    return Number.isInteger(fd) && fd >= 0 ? (this.fds[fd] ?? null) : null;
  }

  close(fd: number): number {
    const f = this.get(fd);
    if (!f) return -EBADF;
    this.fds[fd] = null;
    f.put();
    return 0;
  }

  /** dup_fd: the child's copy (every file gets a reference). */
  dup(): FdTable {
    const t = new FdTable();
    for (const f of this.fds) t.fds.push(f ? f.get() : null);
    return t;
  }

  closeAll(): void {
    for (let fd = 0; fd < this.fds.length; fd++) if (this.fds[fd]) this.close(fd);
  }
}

/** Per-process (thread group) state shared by its threads. */
export class ThreadGroup {
  readonly threads = new Set<Task>();
  readonly exited = new WaitQueue('wait4');
  exitCode: number | null = null;
  /** The task that created this process (for waitpid), by pid. */
  parentPid = 0;
  readonly children = new Set<number>();
  /** Exit codes of children that have finished, until reaped. */
  readonly zombies = new Map<number, number>();

  constructor(
    readonly tgid: number,
    public files: FdTable,
  ) {}
}

export function groupOf(t: Task): ThreadGroup | null {
  return (t.ext.get('group') as ThreadGroup | undefined) ?? null;
}

/** exit_mm: the task stops using its address space. */
export function* exit_mm(k: Kernel, t: Task): KGen {
  const mm = t.mm;
  if (!mm) return;
  t.mm = null;
  // The CPU keeps the mm loaded lazily until it switches away (the lazy reference holds it).
  yield* mmput(k, mm);
}

/** do_exit: release everything a task holds; the caller returns its code from the task body. */
export function* do_exit(k: Kernel, t: Task, code: number): KGen<number> {
  t.inKernel = Math.max(t.inKernel, 1);
  const cpu = k.machine.cpu(t.cpu);
  if (cpu.readCpl() !== 0) cpu.setCpl(0);
  yield* exit_mm(k, t);
  const g = groupOf(t);
  if (g) {
    g.threads.delete(t);
    if (g.threads.size === 0) {
      g.exitCode = code;
      g.files.closeAll();
      const parent = k.groups.get(g.parentPid);
      if (parent) {
        parent.zombies.set(g.tgid, code);
        parent.exited.wakeAll(k);
      }
      g.exited.wakeAll(k);
      k.groups.delete(g.tgid);
    }
  }
  return code;
}
