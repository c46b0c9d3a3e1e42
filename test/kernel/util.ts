// Shared helpers of the kernel mm-core tests: booting a small machine, running a program to the
// end with its assertion failures carried out of the simulation, catching errno and signals inside
// a program, a fake character device whose ->mmap and vm_ops hooks record what the kernel calls,
// and the checks every test ends with (invariants, reports, leaked frames).
import { expect } from 'vitest';
import { Kernel, type KernelOptions } from '../../kernel/kernel.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { SyscallError } from '../../kernel/errno.ts';
import { SignalError } from '../../kernel/signal.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { assert_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { vmFlagNames, type MmStruct, type VmArea, type VmFault, type VmOperations } from '../../kernel/mm/mm_types.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { GFP_KERNEL, __GFP_ZERO, type PageRefHolder } from '../../kernel/mm/page_alloc.ts';

export const PAGE = 4096;
export const MB2 = 2 << 20;

/** A small machine: 2 CPUs, 64 MiB, fixed seed. */
export function boot(opts: KernelOptions = {}): Kernel {
  return new Kernel({ cpus: 2, memoryBytes: 64 << 20, seed: 1, ...opts });
}

export type Body = (u: User) => KGen<void | number>;

/**
 * Run `body` as a process until the whole system is idle. An exception escaping the body (a
 * failed expect, an unexpected SyscallError or SignalError) is carried out and rethrown here, so
 * a test fails with the program's own assertion message.
 */
export function run(k: Kernel, body: Body, opts: { comm?: string; untilCycles?: number; maxSteps?: number } = {}): Task {
  let failure: unknown = null;
  let finished = false;
  const t = k.spawn(
    function* (u: User) {
      try {
        const r = yield* body(u);
        finished = true;
        return r;
      } catch (e) {
        failure = e;
        finished = true;
        return 99;
      }
    },
    { comm: opts.comm ?? 'test' },
  );
  // A bound on scheduling steps, so a program waiting for something that never happens fails
  // the test instead of running forever.
  const r = k.run(opts.untilCycles ? { untilCycles: opts.untilCycles } : { maxSteps: opts.maxSteps ?? 2_000_000 });
  if (failure) throw failure;
  if (!finished) throw new Error(`the program did not finish (run ended: ${r.reason}; reports: ${k.reports.reports.map((x) => x.title).join(' | ')})`);
  return t;
}

/** Boot a machine (boot(opts)), run `body` as a process to the end (run), return the kernel. */
export function runProgram(body: (u: User, k: Kernel) => KGen<void | number>, opts: KernelOptions = {}): Kernel {
  const k = boot(opts);
  run(k, (u) => body(u, k));
  return k;
}

/** The errno name a syscall fails with, or 'OK' (and the result in `value`). */
export function* errno<T>(g: KGen<T>): KGen<string> {
  try {
    yield* g;
    return 'OK';
  } catch (e) {
    if (e instanceof SyscallError) return e.code;
    throw e;
  }
}

/** Run an access that must fault with a signal; returns it (throws if none). */
export function* signalOf(g: KGen<unknown>): KGen<SignalError> {
  try {
    yield* g;
  } catch (e) {
    if (e instanceof SignalError) return e;
    throw e;
  }
  throw new Error('expected a signal, the access succeeded');
}

/** [start, end, flag names] of every VMA, for readable comparisons. */
export function vmaList(mm: MmStruct): [number, number, string][] {
  return mm.vmas().map((v) => [v.vm_start, v.vm_end, vmFlagNames(v.vm_flags)]);
}

/** The VMA ranges only. */
export function ranges(mm: MmStruct): [number, number][] {
  return mm.vmas().map((v) => [v.vm_start, v.vm_end]);
}

/** The pfn mapped at `va` in `mm`, or -1. */
export function pfnAt(k: Kernel, mm: MmStruct, va: number): number {
  const ptep = k.pt.pte_offset(mm, va);
  if (ptep < 0) {
    // A 2 MiB leaf (PS=1 PDE) stops the walk above the PTE level.
    const pmdp = k.pt.pmd_offset(mm, va);
    if (pmdp < 0) return -1;
    const lo = k.pt.lo(pmdp);
    if ((lo & 0x81) !== 0x81) return -1;
    return (ptePfn(lo, k.pt.hi(pmdp)) & ~511) + Math.floor((va % MB2) / PAGE);
  }
  const lo = k.pt.lo(ptep);
  if (!(lo & 1)) return -1;
  return ptePfn(lo, k.pt.hi(ptep));
}

/** The raw PTE [lo, hi] at `va`, or null when there is no page table. */
export function pteAt(k: Kernel, mm: MmStruct, va: number): [number, number] | null {
  const ptep = k.pt.pte_offset(mm, va);
  if (ptep < 0) return null;
  return [k.pt.lo(ptep), k.pt.hi(ptep)];
}

/** Invariants hold and no report of any kind was filed. */
export function expectClean(k: Kernel): void {
  assert_vm_invariants(k);
  expect(k.reports.reports.map((r) => `${r.kind}: ${r.title}`)).toEqual([]);
}

/** Report titles of one kind. */
export function reportsOf(k: Kernel, kind: string): string[] {
  return k.reports.reports.filter((r) => r.kind === kind).map((r) => r.title);
}

// ---- a fake character device ----------------------------------------------------------------

export interface DevEvent {
  ev: 'mmap' | 'open' | 'close' | 'fault' | 'may_split' | 'mremap' | 'release';
  vma: number;
  start: number;
  end: number;
  pgoff: number;
}

export interface FakeDevice {
  path: string;
  events: DevEvent[];
  fops: FileOperations;
  vmOps: VmOperations;
  /** VMAs handed to ->mmap, in order. */
  mmapped: VmArea[];
}

export interface FakeDeviceOptions {
  /** Body of ->mmap (after vm_ops are installed); return -errno to refuse. */
  mmap?: (vma: VmArea, file: File) => number | KGen<number>;
  /** Extra vm_ops (fault, may_split, mremap, map_pages, open, close …); every hook is recorded. */
  ops?: Partial<VmOperations>;
  /** Leave ->close out of vm_ops. */
  noClose?: boolean;
  /** Leave ->open out of vm_ops. */
  noOpen?: boolean;
  /** No ->mmap in file_operations at all. */
  noMmap?: boolean;
}

/** Register `/dev/<name>`; every open gives a new File on one shared inode. */
export function fakeDevice(k: Kernel, name: string, o: FakeDeviceOptions = {}): FakeDevice {
  const path = `/dev/${name}`;
  const events: DevEvent[] = [];
  const rec = (ev: DevEvent['ev'], v: VmArea): void => {
    events.push({ ev, vma: v.id, start: v.vm_start, end: v.vm_end, pgoff: v.vm_pgoff });
  };
  const vmOps: VmOperations = { name, ...o.ops };
  const userOpen = o.ops?.open;
  const userClose = o.ops?.close;
  if (!o.noOpen) {
    vmOps.open = (v: VmArea) => {
      rec('open', v);
      userOpen?.(v);
    };
  }
  if (!o.noClose) {
    vmOps.close = (v: VmArea) => {
      rec('close', v);
      userClose?.(v);
    };
  }
  if (o.ops?.fault) {
    const f = o.ops.fault;
    vmOps.fault = (vmf: VmFault) => {
      rec('fault', vmf.vma);
      return f(vmf);
    };
  }
  if (o.ops?.may_split) {
    const f = o.ops.may_split;
    vmOps.may_split = (v: VmArea, addr: number) => {
      rec('may_split', v);
      return f(v, addr);
    };
  }
  if (o.ops?.mremap) {
    const f = o.ops.mremap;
    vmOps.mremap = (v: VmArea) => {
      rec('mremap', v);
      return f(v);
    };
  }
  const dev: FakeDevice = { path, events, vmOps, mmapped: [], fops: { name } };
  dev.fops = {
    name,
    release: () => {
      events.push({ ev: 'release', vma: 0, start: 0, end: 0, pgoff: 0 });
    },
    ...(o.noMmap
      ? {}
      : {
          *mmap(file: File, vma: VmArea): KGen<number> {
            rec('mmap', vma);
            dev.mmapped.push(vma);
            vma.vm_ops = vmOps;
            if (!o.mmap) return 0;
            const r = o.mmap(vma, file);
            return typeof r === 'number' ? r : yield* r;
          },
        }),
  };
  const inode = new Inode(k, 'chr', [10, 200]);
  k.devices.set(path, { open: () => new File(k, inode, dev.fops, path) });
  return dev;
}

/** Events of one kind, as [vma id, start, end]. */
export function eventsOf(d: FakeDevice, ev: DevEvent['ev']): [number, number, number][] {
  return d.events.filter((e) => e.ev === ev).map((e) => [e.vma, e.start, e.end]);
}

// ---- driver-owned pages ------------------------------------------------------------------------

/**
 * Pages a fake driver owns: one reference each, registered as a page-reference holder so the
 * invariant checker accounts for them. `release()` drops them all.
 */
export class PagePool implements PageRefHolder {
  readonly holderName: string;
  readonly pfns: number[] = [];
  constructor(
    readonly k: Kernel,
    name: string,
  ) {
    this.holderName = `test driver ${name}`;
    k.pageRefHolders.add(this);
  }
  /** The pool's page number `i`, allocated (zeroed) on first use. */
  page(i: number): number {
    while (this.pfns.length <= i) {
      const pfn = this.k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'test driver page');
      if (pfn < 0) throw new Error('test driver: out of memory');
      this.pfns.push(pfn);
    }
    return this.pfns[i]!;
  }
  forEachPageRef(emit: (pfn: number) => void): void {
    for (const p of this.pfns) emit(p);
  }
  release(): void {
    for (const p of this.pfns) this.k.pages.putPage(p, 'test driver release');
    this.pfns.length = 0;
    this.k.pageRefHolders.delete(this);
  }
}
