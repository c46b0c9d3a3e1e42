/**
 * kernel/locking/lockdep.ts — lock dependency tracking (kernel/locking/lockdep.c, reduced):
 * every blocking acquisition records "held lock class → new lock class" edges; acquiring B while
 * holding A when a chain B → … → A was seen before is a possible deadlock, reported once per pair
 * in lockdep's "possible circular locking dependency detected" format. Trylocks are recorded as
 * held but add no dependency (they cannot deadlock), as in Linux. lockdep_assert_held() checks
 * also live here.
 */

import type { Kernel } from '../kernel.ts';
import type { Task } from '../sched/core.ts';
import { contextLine } from '../report.ts';

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
  let h = t.ext.get('lockdep') as HeldLock[] | undefined;
  if (!h) {
    h = [];
    t.ext.set('lockdep', h);
  }
  return h;
}

export class Lockdep {
  enabled = true;
  private readonly edges = new Map<string, Map<string, Edge>>();
  private readonly reported = new Set<string>();
  /** Dependencies recorded (for tests and reports). */
  dependencies = 0;

  constructor(private readonly k: Kernel) {}

  held(t: Task | null = this.k.current): readonly HeldLock[] {
    return t ? heldOf(t) : [];
  }

  /** Record that the current task (or `t`) is acquiring/has acquired a lock. */
  acquire(cls: string, instance: object, mode: LockMode, site: string, trylock: boolean, t: Task | null = this.k.current): void {
    if (!t) return;
    const held = heldOf(t);
    if (this.enabled && !trylock) {
      for (const h of held) {
        if (h.cls === cls && h.instance === instance) continue; // recursive read of the same lock
        if (h.cls === cls) continue; // nesting of one class (subclasses are not modelled)
        this.addEdge(h, cls, site, t);
      }
    }
    held.push({ cls, instance, mode, site, trylock });
  }

  release(instance: object, t: Task | null = this.k.current): void {
    if (!t) return;
    const held = heldOf(t);
    for (let i = held.length - 1; i >= 0; i--) {
      if (held[i]!.instance === instance) {
        held.splice(i, 1);
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

  private addEdge(held: HeldLock, cls: string, site: string, t: Task): void {
    let m = this.edges.get(held.cls);
    if (!m) {
      m = new Map();
      this.edges.set(held.cls, m);
    }
    if (m.has(cls)) return;
    // Is there already a path cls → … → held.cls? Then this new edge closes a cycle.
    const path = this.path(cls, held.cls);
    if (path) this.reportCycle(held, cls, site, path, t);
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

  private reportCycle(held: HeldLock, cls: string, site: string, path: string[], t: Task): void {
    const key = [held.cls, cls].sort().join(' <-> ');
    if (this.reported.has(key)) return;
    this.reported.add(key);
    const dash = '------------------------------------------------------';
    const lines = [
      '======================================================',
      'WARNING: possible circular locking dependency detected',
      '6.12.0-mmulab #1 Not tainted',
      dash,
      `${t.comm}/${t.pid} is trying to acquire lock:`,
      ` (${cls}){+.+.}-{4:4}, at: ${site}`,
      '',
      'but task is already holding lock:',
      ` (${held.cls}){+.+.}-{4:4}, at: ${held.site}`,
      '',
      'which lock already depends on the new lock.',
      '',
      '',
      'the existing dependency chain (in reverse order) is:',
    ];
    // path is cls → … → held.cls; print it from the end, as lockdep does.
    for (let i = path.length - 1; i >= 0; i--) {
      const c = path[i]!;
      const prev = i > 0 ? path[i - 1]! : null;
      const e = prev ? this.edges.get(prev)?.get(c) : undefined;
      lines.push('', `-> #${i} (${c}){+.+.}-{4:4}:`, `       ${e ? e.newSite : site}`);
    }
    lines.push(
      '',
      'other info that might help us debug this:',
      '',
      ' Possible unsafe locking scenario:',
      '',
      '       CPU0                    CPU1',
      '       ----                    ----',
      `  lock(${held.cls});`,
      `                               lock(${cls});`,
      `                               lock(${held.cls});`,
      `  lock(${cls});`,
      '',
      ' *** DEADLOCK ***',
      '',
      contextLine(this.k.thisCpu(), t.pid, t.comm),
    );
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
    const ok = h !== null && (need === 'any' || (need === 'write' ? h.mode === 'write' || h.mode === 'exclusive' : true));
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
