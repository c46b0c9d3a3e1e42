/**
 * kernel/rust/borrow.ts — run-time stand-ins for what the Rust compiler proves statically in
 * rust/kernel/mm.rs and rust/kernel/mm/virt.rs: a reference obtained from a guard lives no
 * longer than the guard, and a VmaNew exists only during the ->mmap hook.
 *
 * A Borrow is the lifetime of such a reference. Guards own one and end it when released; every
 * method of a reference checks its Borrow first. Use after the end is what Rust would refuse to
 * compile and C would turn into a use-after-free: mmulab files a BUG report naming the call site
 * and the site where the borrow ended, counts it, and refuses the call (the method returns its
 * error value), so an experiment can go on and count further violations.
 */

import type { Kernel } from '../kernel.ts';

/** The repository root (this file is kernel/rust/borrow.ts), for repository-relative sites. */
const ROOT = new URL('../../', import.meta.url).pathname;

export class Borrow {
  live = true;
  private endSite: string | Error = '';
  private startSite: string | Error;

  /**
   * `startedAt` is a site string, or an Error captured at the start (formatted only if a report
   * needs it: capturing is cheap, formatting a stack is not).
   */
  constructor(
    readonly what: string,
    startedAt: string | Error = new Error(),
  ) {
    this.startSite = startedAt;
  }

  /** Where the borrow began. */
  get startedAt(): string {
    if (typeof this.startSite !== 'string') this.startSite = callSite(this.startSite);
    return this.startSite;
  }

  /** Where the borrow ended. */
  get endedAt(): string {
    if (typeof this.endSite !== 'string') this.endSite = callSite(this.endSite);
    return this.endSite;
  }

  end(site: string | Error = new Error()): void {
    this.live = false;
    this.endSite = site;
  }
}

/**
 * The caller of the typed API: the first stack frame outside kernel/rust/ of `at` (default:
 * here), as "path:line (function)". Deterministic for the same code.
 */
export function callSite(at: Error = new Error()): string {
  const stack = at.stack ?? '';
  for (const line of stack.split('\n').slice(1)) {
    if (line.includes('/kernel/rust/') || line.includes('node:internal') || line.includes('<anonymous>')) continue;
    const m = /at (?:(\S+) )?\(?(.*?):(\d+):\d+\)?$/.exec(line.trim());
    if (!m) continue;
    const file = m[2]!.replace(/^file:\/\//, '');
    const rel = file.startsWith(ROOT) ? file.slice(ROOT.length) : file.slice(file.lastIndexOf('/') + 1);
    return `${rel}:${m[3]}${m[1] ? ` (${m[1]})` : ''}`;
  }
  return 'unknown';
}

export interface BorrowCounters {
  /** Uses of a reference after its guard or hook ended. */
  useAfterEnd: number;
  /** Guards released twice. */
  doubleRelease: number;
  /** zap_page_range_single calls dropped by the silent bounds check. */
  silentZapSkips: number;
}

export function borrowCounters(k: Kernel): BorrowCounters {
  let c = k.subsystems.get('rust-mm') as BorrowCounters | undefined;
  if (!c) {
    c = { useAfterEnd: 0, doubleRelease: 0, silentZapSkips: 0 };
    k.subsystems.set('rust-mm', c);
  }
  return c;
}

/** Check `b` before `method` runs; false (after reporting) if the borrow has ended. */
export function checkBorrow(k: Kernel, b: Borrow, method: string): boolean {
  if (b.live) return true;
  const site = callSite();
  borrowCounters(k).useAfterEnd++;
  k.report({
    kind: 'BUG',
    title: `BUG: ${b.what} used after its lifetime ended (${method})`,
    text: [
      `BUG: ${b.what} used after its lifetime ended`,
      `${method} called at ${site}`,
      `the reference was obtained at ${b.startedAt} and its lifetime ended at ${b.endedAt}`,
      'a VMA may be used only while the lock that found it is held (or, for VmaNew, inside ->mmap);',
      'Rust would reject this at compile time, C would use a VMA that may have been freed or replaced',
    ].join('\n'),
    data: { method, site, obtained: b.startedAt, ended: b.endedAt, contract: 'vma-lifetime' },
  });
  return false;
}
