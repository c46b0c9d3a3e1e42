/**
 * kernel/ids.ts — the numbers a kernel gives its objects: inode numbers (fs/inode.c's
 * get_next_ino), mm context ids (arch/x86/mm/tlb.c's last_mm_ctx_id), and the identities the model
 * shows in reports, traces and /proc (VMAs, anon_vmas, address_spaces, files, pipes, tasks) or
 * that drivers keep (binder's debug ids, through next()).
 *
 * One set per Kernel: Linux's counters are global to a running kernel, and a Kernel is one
 * machine. Kept per Kernel rather than per module, two kernels built in one process (a sweep's
 * jobs, tests) number their objects alike, so the same seed gives the same bytes whatever ran
 * before it in the process.
 */

export class KernelIds {
  /** vm_area_struct. */
  vma = 1;
  /** anon_vma (also the page->mapping of its anonymous pages). */
  anonVma = 1;
  /** mm_struct's context.ctx_id. */
  ctx = 1;
  /** Task creation order (ties between equal timer expiries). */
  task = 1;
  /** Inode numbers, as get_next_ino. */
  ino = 1000;
  /** address_space. */
  mapping = 1;
  /** struct file. */
  file = 1;
  /** pipe_inode_info (pipe:[N] uses the inode number). */
  pipe = 1;
  private readonly named = new Map<string, number>();

  /** The next number of a counter kept for a subsystem or driver (`name`), from 1. */
  next(name: string): number {
    const n = this.named.get(name) ?? 1;
    this.named.set(name, n + 1);
    return n;
  }
}
