/**
 * src/fuzz/classify.ts — which of the kernel's reports a fuzz run may expect and which are
 * failures.
 *
 * Bad input must be refused, not crash anything: a failing system call (an errno), a signal the
 * program handles (SIGSEGV/SIGBUS at an access it made on purpose), a binder user error (the
 * driver's binder_user_error log line, BR_FAILED_REPLY, BR_DEAD_REPLY) are all expected and only
 * counted. Everything the kernel's checkers file as a report — KASAN, BUG, WARN, lockdep, a bad
 * page, an oops — means the kernel did something wrong and fails the run, as it does for syzkaller.
 * So does a process killed by a signal: the fuzzer's programs handle every signal their accesses
 * can raise, so a fatal one (or a "program error", a JavaScript exception escaping kernel code
 * into the program) is the kernel's fault too.
 */

import type { Report, ReportKind } from '../../kernel/report.ts';

/** Report kinds that fail a fuzz run. */
export const UNEXPECTED_KINDS: readonly ReportKind[] = ['KASAN', 'BUG', 'WARN', 'lockdep', 'bad-page', 'oops', 'signal'];

export interface Classified {
  expected: Report[];
  unexpected: Report[];
}

export function classifyReports(reports: readonly Report[]): Classified {
  const out: Classified = { expected: [], unexpected: [] };
  for (const r of reports) (UNEXPECTED_KINDS.includes(r.kind) ? out.unexpected : out.expected).push(r);
  return out;
}

/** Counters of what the run met and expected (printed by `mmulab fuzz`, asserted by tests). */
export interface ExpectedOutcomes {
  /** Failed system calls by errno name. */
  errnos: Record<string, number>;
  /** Signals handled by the programs, by name. */
  signals: Record<string, number>;
  /** binder_user_error lines logged by the driver. */
  binderUserErrors: number;
  /** Binder return codes seen by the programs (BR_FAILED_REPLY, BR_DEAD_REPLY, …). */
  binderReturns: Record<string, number>;
}

export function emptyOutcomes(): ExpectedOutcomes {
  return { errnos: {}, signals: {}, binderUserErrors: 0, binderReturns: {} };
}

export function bump(m: Record<string, number>, key: string, n = 1): void {
  m[key] = (m[key] ?? 0) + n;
}

export function mergeOutcomes(into: ExpectedOutcomes, from: ExpectedOutcomes): void {
  for (const [k, v] of Object.entries(from.errnos)) bump(into.errnos, k, v);
  for (const [k, v] of Object.entries(from.signals)) bump(into.signals, k, v);
  for (const [k, v] of Object.entries(from.binderReturns)) bump(into.binderReturns, k, v);
  into.binderUserErrors += from.binderUserErrors;
}
