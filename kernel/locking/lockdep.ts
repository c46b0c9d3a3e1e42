/**
 * kernel/locking/lockdep.ts — lock dependency tracking (kernel/locking/lockdep.c, reduced):
 * every blocking acquisition records "held lock class → new lock class" edges; acquiring B while
 * holding A when a chain B → … → A was seen before is a possible deadlock, reported once per pair
 * in lockdep's "possible circular locking dependency detected" format. Trylocks are recorded as
 * held but add no dependency (they cannot deadlock), as in Linux. lockdep_assert_held() checks
 * also live here.
 *
 * Deviations: no subclasses (two locks of one class never form a dependency, and no "possible
 * recursive locking" report); every dependency counts as strong (rwsem readers are
 * non-recursive, read=1, as in Linux, so only recursive-read rwlock_t would differ); no irq-state
 * tracking, so usage chars show only which of write/read uses were seen, and every class has the
 * sleeping-lock wait type {4:4}; stack traces are the call-site labels of the acquisitions.
 */

import type { Kernel } from '../kernel.ts';
import type { Task } from '../sched/core.ts';
import { callTrace, contextLine } from '../report.ts';

export type LockMode = 'read' | 'write' | 'exclusive';

export interface HeldLock {
  cls: string;
  instance: object;
  mode: LockMode;
  site: string;
  trylock: boolean;
}

interface Edge {
  /** Sites of the first time the dependency was seen: [site of the held lock, site of the new]. */
  heldSite: string;
  newSite: string;
}

function heldOf(t: Task): HeldLock[] {
  let h = t.lockdepHeld as HeldLock[] | null;
  if (!h) {
    h = [];
    t.lockdepHeld = h;
  }
  return h;
}

export class Lockdep {
  enabled = true;
  private readonly edges = new Map<string, Map<string, Edge>>();
  private readonly reported = new Set<string>();
  /** Dependencies recorded (for tests and reports). */
  dependencies = 0;
  /** Per class: 1 = taken for write/exclusive, 2 = taken for read (the usage chars). */
  private readonly usage = new Map<string, number>();
  private readonly addrs = new WeakMap<object, string>();
  private nAddrs = 0;
  /** The instance being acquired while its dependencies are checked (for the report). */
  private acquiring: object | null = null;

  constructor(private readonly k: Kernel) {}

  held(t: Task | null = this.k.current): readonly HeldLock[] {
    return t ? heldOf(t) : [];
  }

  /** Record that the current task (or `t`) is acquiring/has acquired a lock. */
  acquire(cls: string, instance: object, mode: LockMode, site: string, trylock: boolean, t: Task | null = this.k.current): void {
    if (!t) return;
    const held = heldOf(t);
    const use = this.usage.get(cls) ?? 0;
    const bit = mode === 'read' ? 2 : 1;
    if ((use & bit) === 0) this.usage.set(cls, use | bit);
    if (this.enabled && !trylock) {
      this.acquiring = instance;
      for (const h of held) {
        if (h.cls === cls && h.instance === instance) continue; // recursive read of the same lock
        if (h.cls === cls) continue; // nesting of one class (subclasses are not modelled)
        this.addEdge(h, cls, mode, site, t);
      }
      this.acquiring = null;
    }
    held.push({ cls, instance, mode, site, trylock });
  }

  release(instance: object, t: Task | null = this.k.current): void {
    if (!t) return;
    const held = heldOf(t);
    for (let i = held.length - 1; i >= 0; i--) {
      if (held[i]!.instance === instance) {
        if (i === held.length - 1) held.pop();
        else held.splice(i, 1);
        return;
      }
    }
  }

  /** Change the recorded mode of a held lock (downgrade). */
  changeMode(instance: object, mode: LockMode, t: Task | null = this.k.current): void {
    if (!t) return;
    for (const h of heldOf(t)) if (h.instance === instance) h.mode = mode;
  }

  isHeld(instance: object, t: Task | null = this.k.current): HeldLock | null {
    if (!t) return null;
    return heldOf(t).find((h) => h.instance === instance) ?? null;
  }

  private addEdge(held: HeldLock, cls: string, mode: LockMode, site: string, t: Task): void {
    let m = this.edges.get(held.cls);
    if (!m) {
      m = new Map();
      this.edges.set(held.cls, m);
    }
    if (m.has(cls)) return;
    // Is there already a path cls → … → held.cls? Then this new edge closes a cycle.
    const path = this.path(cls, held.cls);
    if (path) this.reportCycle(held, cls, mode, site, path, t);
    m.set(cls, { heldSite: held.site, newSite: site });
    this.dependencies++;
  }

  /** A dependency path from `from` to `to` as a list of classes, or null. */
  private path(from: string, to: string): string[] | null {
    const seen = new Set<string>();
    const stack: [string, string[]][] = [[from, [from]]];
    while (stack.length) {
      const [c, p] = stack.pop()!;
      if (c === to) return p;
      if (seen.has(c)) continue;
      seen.add(c);
      for (const next of this.edges.get(c)?.keys() ?? []) stack.push([next, [...p, next]]);
    }
    return null;
  }

  /** `%px` of a lock instance: a stable pseudo-pointer per instance. */
  private addr(instance: object): string {
    let a = this.addrs.get(instance);
    if (!a) {
      a = (0xffff888100000000n + BigInt(++this.nAddrs) * 0x40n).toString(16);
      this.addrs.set(instance, a);
    }
    return a;
  }

  /**
   * print_lock_name: " (class){usage}-{outer:inner}". Usage chars per irq state (hardirq,
   * softirq): '+' for the write and read uses seen (all with irqs enabled here), '.' otherwise.
   * The wait type is LD_WAIT_SLEEP (4 with CONFIG_PROVE_RAW_LOCK_NESTING) for every class.
   */
  private lockName(cls: string): string {
    const u = this.usage.get(cls) ?? 0;
    const w = u & 1 ? '+' : '.';
    const r = u & 2 ? '+' : '.';
    return ` (${cls}){${w}${r}${w}${r}}-{4:4}`;
  }

  /** print_lock: "%px (class){usage}-{x:y}, at: site". */
  private printLock(h: HeldLock): string {
    return `${this.addr(h.instance)}${this.lockName(h.cls)}, at: ${h.site}`;
  }

  /**
   * print_circular_bug: `path` is the existing chain new → … → held; the report lists it in
   * reverse (-> #n for the held class down to -> #0 for the new one, each with the site that
   * created the dependency), then the two-CPU scenario (with "Chain exists of" when the cycle has
   * more than two classes), the held locks and the stack.
   */
  private reportCycle(held: HeldLock, cls: string, mode: LockMode, site: string, path: string[], t: Task): void {
    const key = [held.cls, cls].sort().join(' <-> ');
    if (this.reported.has(key)) return;
    this.reported.add(key);
    const dash = '------------------------------------------------------';
    const lines = [
      '',
      '======================================================',
      'WARNING: possible circular locking dependency detected',
      '6.12.0-mmulab #1 Not tainted',
      dash,
      `${t.comm}/${t.pid} is trying to acquire lock:`,
      this.printLock({ cls, instance: this.acquiring ?? {}, mode, site, trylock: false }),
      '',
      'but task is already holding lock:',
      this.printLock(held),
      '',
      'which lock already depends on the new lock.',
      '',
      '',
      'the existing dependency chain (in reverse order) is:',
    ];
    for (let i = path.length - 1; i >= 0; i--) {
      const c = path[i]!;
      const prev = i > 0 ? path[i - 1]! : null;
      const e = prev ? this.edges.get(prev)?.get(c) : undefined;
      lines.push('', `-> #${i}${this.lockName(c)}:`, `       ${e ? e.newSite : site}`);
    }
    // print_circular_lock_scenario: source = the new class, target = the held one, parent = the
    // class the chain reaches the held one from.
    const parent = path.length >= 2 ? path[path.length - 2]! : cls;
    lines.push('', 'other info that might help us debug this:', '');
    if (parent !== cls) lines.push('Chain exists of:', `  ${cls} --> ${parent} --> ${held.cls}`, '');
    lines.push(
      ' Possible unsafe locking scenario:',
      '',
      '       CPU0                    CPU1',
      '       ----                    ----',
      `  ${held.mode === 'read' ? 'rlock' : 'lock'}(${held.cls});`,
      `                               lock(${parent});`,
      `                               lock(${held.cls});`,
      `  ${mode === 'read' ? 'rlock' : 'lock'}(${cls});`,
      '',
      ' *** DEADLOCK ***',
      '',
    );
    // lockdep_print_held_locks: the locks held before this acquisition.
    const hs = heldOf(t);
    lines.push(hs.length ? `${hs.length} lock${hs.length > 1 ? 's' : ''} held by ${t.comm}/${t.pid}:` : `no locks held by ${t.comm}/${t.pid}.`);
    hs.forEach((h, i) => lines.push(` #${i}: ${this.printLock(h)}`));
    lines.push('', 'stack backtrace:', contextLine(this.k.thisCpu(), t.pid, t.comm), ...callTrace([site, ...hs.map((h) => h.site).reverse()]));
    const title = 'WARNING: possible circular locking dependency detected';
    this.k.report({ kind: 'lockdep', title, text: lines.join('\n'), data: { held: held.cls, acquiring: cls, heldSite: held.site, site, chain: path } });
  }

  /**
   * lockdep_assert_held (and its read/write forms): report when the current task does not hold
   * `instance` in a mode that satisfies `need`.
   */
  assertHeld(instance: object, cls: string, need: 'any' | 'read' | 'write', func: string): boolean {
    const t = this.k.current;
    const h = t ? this.isHeld(instance, t) : null;
    // lock_is_held_type(lock, read): held at all (-1), held exclusively (0), held for read (1).
    const ok = h !== null && (need === 'any' || (need === 'write' ? h.mode === 'write' || h.mode === 'exclusive' : h.mode === 'read'));
    if (ok) return true;
    const what = need === 'write' ? 'lockdep_assert_held_write' : need === 'read' ? 'lockdep_assert_held_read' : 'lockdep_assert_held';
    const title = `WARNING: ${func}: ${what}(${cls}) failed`;
    const text = [
      '------------[ cut here ]------------',
      `WARNING: CPU: ${this.k.thisCpu()} PID: ${t?.pid ?? 0} at ${func}`,
      `${what}(${cls}) failed: the lock is ${h ? `held for ${h.mode}` : 'not held'}`,
      contextLine(this.k.thisCpu(), t?.pid, t?.comm),
      '---[ end trace 0000000000000000 ]---',
    ].join('\n');
    this.k.report({ kind: 'lockdep', title, text, data: { cls, need, func, held: h?.mode ?? null } });
    return false;
  }
}
