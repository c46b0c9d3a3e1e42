// Random operation sequences (fast-check, fixed seed): mmap (fixed, no-replace, hinted; private,
// shared, a VM_MIXEDMAP device, a VM_GROWSDOWN stack that touches below it grow), munmap,
// mprotect, mremap (in place, moving, fixed, dontunmap), madvise, touches and forks with a child
// that touches and changes its copy, over a small address window with overlapping ranges and
// lengths one byte off a page multiple. After every step the whole mm state must pass the
// invariant checker with no report filed; at the end no frame is leaked and the device's
// ->mmap/->open calls balance its ->close calls. The same sequence run on two fresh kernels must
// end in identical states (deterministic replay).
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE } from '../../kernel/mm/mremap.ts';
import {
  MADV_DOFORK, MADV_DONTFORK, MADV_DONTNEED, MADV_FREE, MADV_KEEPONFORK, MADV_NORMAL, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_WIPEONFORK,
} from '../../kernel/mm/madvise.ts';
import { VM_MIXEDMAP, vmFlagNames, type VmArea } from '../../kernel/mm/mm_types.ts';
import { vm_insert_page, faultCounters } from '../../kernel/mm/memory.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { SyscallError } from '../../kernel/errno.ts';
import { SignalError } from '../../kernel/signal.ts';
import { PAGE, PagePool, boot, fakeDevice, type FakeDevice } from './util.ts';

/** The window: 24 pages. mremap destinations and hints stay inside it too. */
const W = 0x40000000;
const NPAGES = 24;
const PROTS = [PROT_READ, PROT_READ | PROT_WRITE, 0, PROT_READ | PROT_EXEC, PROT_READ | PROT_WRITE | PROT_EXEC];
const ADVICE = [MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_FREE, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_NORMAL];

type Touch = { page: number; write: boolean };
type Op =
  | { op: 'mmap'; page: number; pages: number; delta: number; prot: number; kind: 'private' | 'shared' | 'device' | 'stack'; how: 'fixed' | 'noreplace' | 'hint' }
  | { op: 'munmap'; page: number; pages: number; delta: number }
  | { op: 'mprotect'; page: number; pages: number; delta: number; prot: number }
  | { op: 'mremap'; page: number; oldPages: number; newPages: number; how: 'none' | 'maymove' | 'fixed' | 'dontunmap'; dest: number }
  | { op: 'madvise'; page: number; pages: number; delta: number; advice: number }
  | { op: 'touch'; touches: Touch[] }
  | { op: 'fork'; touches: Touch[]; change: Op | null };

const page = fc.integer({ min: 0, max: NPAGES - 1 });
const pages = fc.integer({ min: 0, max: 6 });
const delta = fc.constantFrom(-1, 0, 0, 1);
const prot = fc.constantFrom(...PROTS);
const touch: fc.Arbitrary<Touch> = fc.record({ page, write: fc.boolean() });

const simpleOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('mmap' as const), page, pages: fc.integer({ min: 1, max: 6 }), delta, prot, kind: fc.constantFrom('private' as const, 'private' as const, 'shared' as const, 'device' as const, 'stack' as const), how: fc.constantFrom('fixed' as const, 'fixed' as const, 'noreplace' as const, 'hint' as const) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('munmap' as const), page, pages, delta }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('mprotect' as const), page, pages, delta, prot }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('mremap' as const), page, oldPages: pages, newPages: fc.integer({ min: 1, max: 6 }), how: fc.constantFrom('none' as const, 'maymove' as const, 'fixed' as const, 'dontunmap' as const), dest: page }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('madvise' as const), page, pages, delta, advice: fc.constantFrom(...ADVICE) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('touch' as const), touches: fc.array(touch, { minLength: 1, maxLength: 6 }) }) },
);
const anyOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 9, arbitrary: simpleOp },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('fork' as const), touches: fc.array(touch, { maxLength: 5 }), change: fc.option(simpleOp, { nil: null }) }) },
);
const sequence = fc.array(anyOp, { minLength: 1, maxLength: 30, size: 'medium' });

/** The window's starting layout (pages 0-3 private RW, 4-6 shared, 8-9 device, 10-15 private RO, 16-19 private RW). */
const PREFILL: Op[] = [
  { op: 'mmap', page: 0, pages: 4, delta: 0, prot: PROT_READ | PROT_WRITE, kind: 'private', how: 'fixed' },
  { op: 'mmap', page: 4, pages: 3, delta: 0, prot: PROT_READ | PROT_WRITE, kind: 'shared', how: 'fixed' },
  { op: 'mmap', page: 8, pages: 2, delta: 0, prot: PROT_READ | PROT_WRITE, kind: 'device', how: 'fixed' },
  { op: 'mmap', page: 10, pages: 6, delta: 0, prot: PROT_READ, kind: 'private', how: 'fixed' },
  { op: 'mmap', page: 16, pages: 4, delta: 0, prot: PROT_READ | PROT_WRITE, kind: 'private', how: 'fixed' },
  { op: 'touch', touches: [0, 1, 4, 8, 16, 17].map((p) => ({ page: p, write: true })) },
];

function len(n: number, d: number): number {
  return Math.max(0, n * PAGE + d);
}

/** Run one operation in `u`'s process; returns a line for the log (result, errno or signal). */
function* doOp(u: User, op: Op, fd: number, step: number): KGen<string> {
  try {
    switch (op.op) {
      case 'mmap': {
        const flags = (op.kind === 'private' ? MAP_PRIVATE | MAP_ANONYMOUS : op.kind === 'stack' ? MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN : op.kind === 'shared' ? MAP_SHARED | MAP_ANONYMOUS : MAP_SHARED) | (op.how === 'fixed' ? MAP_FIXED : op.how === 'noreplace' ? MAP_FIXED_NOREPLACE : 0);
        const a = yield* u.mmap(W + op.page * PAGE, len(op.pages, op.delta), op.prot, flags, op.kind === 'device' ? fd : -1, op.kind === 'device' ? op.page * PAGE : 0);
        return `mmap ${(a - W) / PAGE}`;
      }
      case 'munmap':
        yield* u.munmap(W + op.page * PAGE, len(op.pages, op.delta));
        return 'munmap ok';
      case 'mprotect':
        yield* u.mprotect(W + op.page * PAGE, len(op.pages, op.delta), op.prot);
        return 'mprotect ok';
      case 'mremap': {
        const flags = { none: 0, maymove: MREMAP_MAYMOVE, fixed: MREMAP_MAYMOVE | MREMAP_FIXED, dontunmap: MREMAP_MAYMOVE | MREMAP_DONTUNMAP }[op.how];
        const newPages = op.how === 'dontunmap' ? op.oldPages : op.newPages;
        const a = yield* u.mremap(W + op.page * PAGE, op.oldPages * PAGE, newPages * PAGE, flags, W + op.dest * PAGE);
        return `mremap ${(a - W) / PAGE}`;
      }
      case 'madvise':
        yield* u.madvise(W + op.page * PAGE, len(op.pages, op.delta), op.advice);
        return 'madvise ok';
      case 'touch': {
        const out: string[] = [];
        for (const t of op.touches) out.push(yield* touchOne(u, t, step));
        return `touch ${out.join(',')}`;
      }
      case 'fork': {
        const lines: string[] = [];
        const child = yield* u.fork(function* (c: User) {
          for (const t of op.touches) lines.push(yield* touchOne(c, t, step));
          if (op.change) lines.push(yield* doOp(c, op.change, fd, step));
          for (const t of op.touches) lines.push(yield* touchOne(c, t, step));
        });
        const status = yield* u.wait(child);
        return `fork ${status} [${lines.join('; ')}]`;
      }
    }
  } catch (e) {
    if (e instanceof SyscallError) return `${op.op} ${e.code}`;
    throw e;
  }
}

/** One access; a write stores a value naming the step and page. Signals are caught. */
function* touchOne(u: User, t: Touch, step: number): KGen<string> {
  const a = W + t.page * PAGE + 8;
  try {
    if (t.write) {
      yield* u.store32(a, (step << 8) | t.page);
      return 'w';
    }
    const v = yield* u.load32(a);
    // Memory holds zero or a value some earlier step wrote (device pages are shared between
    // addresses, so not necessarily to this page) — never poisoned or foreign data.
    if (v !== 0 && ((v & 0xff) >= NPAGES || v >>> 8 > step)) throw new Error(`read 0x${v.toString(16)} at page ${t.page} in step ${step}`);
    return `r${v >>> 8}`;
  } catch (e) {
    if (e instanceof SignalError) return e.codename;
    throw e;
  }
}

interface Outcome {
  log: string[];
  digest: string;
  leaked: number;
  hookBalance: [number, number];
}

/**
 * Run `ops` in one process on a fresh kernel, checking the invariants after every step. With
 * `racer`, a second thread on the other CPU keeps touching those pages meanwhile (the invariants
 * are then checked at the end only, since a step may stop while the racer is inside the kernel).
 */
function runOps(ops: Op[], checkEveryStep = true, racer: Touch[] = []): Outcome {
  const k = boot({ memoryBytes: 16 << 20 });
  const pool = new PagePool(k, 'rnd');
  const dev: FakeDevice = fakeDevice(k, 'rnd', {
    mmap(vma: VmArea) {
      vma.vm_flags |= VM_MIXEDMAP;
      for (let i = 0; i < vma.pages; i++) {
        const r = vm_insert_page(k, vma, vma.vm_start + i * PAGE, pool.page((vma.vm_pgoff + i) % 8));
        if (r) return r;
      }
      return 0;
    },
  });
  pool.page(7);
  const before = k.pages.usedFrames;
  const log: string[] = [];
  let failure: unknown = null;
  let digest = '';
  k.spawn(function* (u: User) {
    try {
      const fd = yield* u.open(dev.path);
      // A populated window to start from: private, shared, device and read-only mappings.
      for (const start of PREFILL) log.push(yield* doOp(u, start, fd, 0));
      if (checkEveryStep) check(k, 'after the prefill');
      let stop = false;
      let racing = racer.length > 0;
      let step = 0;
      if (racing) {
        yield* u.clone(
          function* (t: User) {
            try {
              for (let i = 0; !stop; i++) yield* touchOne(t, racer[i % racer.length]!, step);
            } catch (e) {
              failure = e;
            }
            racing = false;
          },
          { cpu: 1 },
        );
      }
      for (let i = 0; i < ops.length; i++) {
        step = i + 1;
        log.push(yield* doOp(u, ops[i]!, fd, step));
        if (checkEveryStep && !racer.length) check(k, `after step ${step} (${JSON.stringify(ops[i])})`);
        else if (k.reports.reports.length) check(k, `after step ${step} (${JSON.stringify(ops[i])})`);
      }
      stop = true;
      while (racing) yield* u.sleep(10_000);
      if (racer.length) check(k, 'after the race');
      digest = stateDigest(k, u);
    } catch (e) {
      failure = e;
    }
  });
  const r = k.run({ maxSteps: 5_000_000 });
  if (failure) throw failure;
  if (r.reason !== 'done') throw new Error(`run ended: ${r.reason}`);
  check(k, 'after exit');
  pool.release();
  const n = (ev: string) => dev.events.filter((e) => e.ev === ev).length;
  return { log, digest, leaked: k.pages.usedFrames - (before - 8), hookBalance: [n('mmap') + n('open'), n('close')] };
}

function check(k: Kernel, where: string): void {
  const r = check_vm_invariants(k);
  if (!r.ok) throw new Error(`invariants violated ${where}:\n  ${r.problems.join('\n  ')}`);
  if (k.reports.reports.length) throw new Error(`reports ${where}:\n  ${k.reports.reports.map((x) => x.title).join('\n  ')}`);
}

/** Everything observable about the process's memory, without object identities. */
function stateDigest(k: Kernel, u: User): string {
  const mm = u.task.mm!;
  const vmas = mm.vmas().map((v) => `${(v.vm_start - W) / PAGE}-${(v.vm_end - W) / PAGE}:${vmFlagNames(v.vm_flags)}:${v.vm_pgoff}:${v.anon_vma ? 'a' : '-'}`);
  const ptes: string[] = [];
  k.pt.forEachLeaf(mm, 0, 2 ** 47, (addr, ptep) => ptes.push(`${addr.toString(16)}=${k.pt.lo(ptep).toString(16)}/${k.pt.hi(ptep).toString(16)}`));
  return JSON.stringify({ vmas, ptes, rss: mm.rss, used: k.pages.usedFrames, faults: faultCounters(k), cycles: k.machine.cpus.map((c) => c.cycles), tlb: k.tlb.stats });
}

describe('random mm operation sequences', () => {
  it('keep every invariant after every step, leak nothing and balance the driver hooks', () => {
    fc.assert(
      fc.property(sequence, (ops) => {
        const o = runOps(ops);
        expect(o.leaked).toBe(0);
        expect(o.hookBalance[0]).toBe(o.hookBalance[1]);
      }),
      { seed: 0x6d6d75, numRuns: 60 },
    );
  }, 60_000);

  it('stay consistent while a second thread keeps touching the window from the other CPU', () => {
    fc.assert(
      fc.property(sequence, fc.array(touch, { minLength: 1, maxLength: 8 }), (ops, racer) => {
        const o = runOps(ops, false, racer);
        expect(o.leaked).toBe(0);
        expect(o.hookBalance[0]).toBe(o.hookBalance[1]);
      }),
      { seed: 0x7ace, numRuns: 40 },
    );
  }, 60_000);

  it('replay deterministically: the same sequence on two fresh kernels ends in the same state', () => {
    fc.assert(
      fc.property(sequence, (ops) => {
        const a = runOps(ops, false);
        const b = runOps(ops, false);
        expect(b.log).toEqual(a.log);
        expect(b.digest).toBe(a.digest);
      }),
      { seed: 0x5eed, numRuns: 12 },
    );
  }, 60_000);

  it('exercises what it claims: every operation kind succeeds somewhere and faults and COW breaks happen', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(sequence, (ops) => {
        const o = runOps(ops, false);
        for (const line of o.log) {
          const key = line.replace(/ -?\d+.*$/, ' n').replace(/\[.*$/, '');
          seen.set(key, (seen.get(key) ?? 0) + 1);
        }
      }),
      { seed: 0x6d6d75, numRuns: 30 },
    );
    for (const want of ['mmap n', 'munmap ok', 'mprotect ok', 'mremap n', 'madvise ok', 'fork n']) expect(seen.get(want) ?? 0, want).toBeGreaterThan(0);
    expect([...seen.keys()].some((x) => x.startsWith('mremap E'))).toBe(true);
    expect([...seen.keys()].some((x) => x.startsWith('mmap E'))).toBe(true);
  });
});
