/**
 * kernel/report.ts — what the kernel's checkers find, in the format their Linux counterparts
 * print: KASAN (mm/kasan/report.c), WARN/BUG (lib/bug.c, kernel/panic.c), lockdep
 * (kernel/locking/lockdep.c), "BUG: Bad page state"/"bad page map" (mm/page_alloc.c,
 * mm/memory.c), and the kernel's message for a process killed by a signal.
 *
 * Every report is counted and kept; an experiment's results include the counts, and a test that
 * expects none asserts none. A BUG aborts the kernel operation that hit it (the report is raised as
 * a KernelBug exception, which kills the current task as an oops would); a WARN continues.
 *
 * Deviation: stacks are symbolic call chains recorded at the call sites mmulab knows (allocation,
 * free, lock acquisition sites), not unwound return addresses.
 */

export type ReportKind = 'KASAN' | 'BUG' | 'WARN' | 'lockdep' | 'bad-page' | 'signal' | 'oops';

export interface Report {
  kind: ReportKind;
  /** The first line, e.g. "BUG: KASAN: use-after-free in binder_alloc_copy_from_buffer". */
  title: string;
  /** The whole report as Linux would print it. */
  text: string;
  cpu: number;
  /** Virtual time (cycles of the reporting CPU). */
  cycles: number;
  pid?: number;
  comm?: string;
  /** Structured facts for programmatic checks (pfn, address, function, …). */
  data: Record<string, unknown>;
}

export const BANNER = '==================================================================';

/** Thrown by BUG(): unwinds the current kernel operation; the scheduler kills the task. */
export class KernelBug extends Error {
  constructor(readonly report: Report) {
    super(report.title);
    this.name = 'KernelBug';
  }
}

export class ReportLog {
  readonly reports: Report[] = [];
  /** Reports of these kinds are expected by the running scenario (and not counted as unexpected). */
  expected = new Set<string>();
  /** Called for each new report (tests may throw from here to stop at the first one). */
  onReport: ((r: Report) => void) | null = null;

  add(r: Report): Report {
    this.reports.push(r);
    if (this.onReport) this.onReport(r);
    return r;
  }

  count(kind?: ReportKind): number {
    return kind ? this.reports.filter((r) => r.kind === kind).length : this.reports.length;
  }

  byKind(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.reports) out[r.kind] = (out[r.kind] ?? 0) + 1;
    return out;
  }

  clear(): void {
    this.reports.length = 0;
  }
}

export function hex(n: number | bigint, width = 16): string {
  const v = typeof n === 'bigint' ? BigInt.asUintN(64, n) : BigInt(Math.floor(n));
  return v.toString(16).padStart(width, '0');
}

/** The CPU/PID/Comm line Linux prints under a report header. */
export function contextLine(cpu: number, pid: number | undefined, comm: string | undefined): string {
  return `CPU: ${cpu} UID: 0 PID: ${pid ?? 0} Comm: ${comm ?? 'swapper'} Not tainted 6.12.0-mmulab #1`;
}

export function callTrace(frames: readonly string[]): string[] {
  return ['Call Trace:', ' <TASK>', ...frames.map((f) => ` ${f}`), ' </TASK>'];
}
