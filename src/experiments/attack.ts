/**
 * src/experiments/attack.ts — the binder security scenarios of the November 2024 linux-mm review
 * (reference binder.md §6, §7, §10), played by emulated processes against every page-mapping
 * design and, for the eager designs, every VMA identity variant. Nothing here is a table of
 * expected answers: each verdict comes from what the emulated machine shows afterwards — page
 * table entries, frame states, TLB contents and the kernel's own checker reports.
 *
 *   1a…1d     impostor VMA. The receiver replaces its binder mapping, at the same address, by
 *             (a) writable shared anonymous memory, (b) a VM_PFNMAP device mapping, (c) a
 *             MAP_HUGETLB mapping, (d) the mapping of a second binder file (binder's own vm_ops,
 *             another allocator: what a vm_ops-only check would let through). Two runs:
 *               install — the sender sends a large oneway transaction; the receiver polls the
 *                 first page of its mapping and, the moment a page shows up (the sender is now
 *                 installing the rest), maps the impostor with MAP_FIXED. binder's ->close runs,
 *                 but the sender has already passed binder_alloc_new_buf's `mapped` check: only
 *                 a check under the VMA lock (the identity variant) can stop it. A design that
 *                 maps nothing at allocation is attacked at delivery instead (the receiver
 *                 swaps first, then reads the transaction). Then: which impostor PTEs map a
 *                 binder frame, are they writable (the receiver writes through them and the
 *                 kernel's view of the frame is compared), a refcounted page in VM_PFNMAP, a
 *                 4 KiB PTE in a hugetlb VMA, checker reports naming the impostor.
 *               reclaim — binder pages are left on the LRU with their PTEs, the receiver swaps
 *                 in a populated impostor, the sender's next allocation is attempted and the
 *                 shrinker runs: did any impostor PTE disappear or change?
 *   2         vmsplice. The receiver splices a binder page into a pipe, frees the buffer, the
 *             shrinker reclaims the page and other work allocates memory: can the pipe still be
 *             read (and is it binder's data), was the frame handed out again while the pipe held
 *             it, did KASAN see anything. Under pfnmap vmsplice must fail.
 *   3         zap without flush. A receiver thread on CPU 1 caches the translation of a binder
 *             page, the buffer is freed and reclaim runs on CPU 0, then the thread reads again:
 *             a use of the freed frame through a stale TLB entry is a KASAN report.
 *   4         vm_insert_page contract: on a VMA without VM_MIXEDMAP only under the mmap write
 *             lock. Ordinary traffic (send, read, free, reclaim, refault) plus the impostor race
 *             of 1a; any vm_insert_page contract report from the driver counts.
 *   5         VMA reference kept past its lock: two transactions, the second installing pages
 *             after the first one's VMA lock was dropped; a report of a VMA (or Rust VmaRef)
 *             used without its lock counts.
 *
 * Scenarios 3 and 5 are about bugs the shipped designs do not have, so each runs twice: the
 * design as shipped (its verdict) and a control with the planted bug (PlantedBugs.zapWithoutFlush,
 * keepVmaReference), which shows the checkers catch the bug class in this design. Scenario 4's
 * control calls vm_insert_page on a plain anonymous VMA under the mmap read lock. With
 * `plant: true` the planted run is the one judged. A verdict is `vulnerable` when the judged run
 * shows a finding, `not-applicable` when the scenario has nothing to act on in the design (the
 * planted bug changes nothing; the design never calls vm_insert_page), `immune` otherwise.
 *
 * Every kernel a scenario builds has `cpus` CPUs (2 by default, and at least 2: scenario 3's
 * reader runs on CPU 1) and the given cost model; scenario 4's contract control runs on one CPU.
 *
 * Deviations: the processes coordinate through plain JavaScript flags polled with nanosleep, as
 * a test harness would use shared memory; everything they do to the kernel goes through system
 * calls. The race of scenario 1 relies on the preemption point binder_alloc has between the
 * pages it installs: the deterministic engine switches CPUs only where kernel code yields, and
 * on real SMP hardware the receiver runs while the sender installs. On the parallel engine
 * (ScenarioOptions.engine) the scenarios' single accesses still run with the kernel, one CPU's
 * turn at a time, so only the interleaving differs. Imports point down only
 * (drivers, kernel, hw).
 */

import { Kernel, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { MmStruct, VmArea, VmFault, VmOperations } from '../../kernel/mm/mm_types.ts';
import { VM_FAULT_SIGBUS, VM_HUGETLB, VM_MIXEDMAP, VM_PFNMAP, vmFlagNames } from '../../kernel/mm/mm_types.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { get_pipe_info, type PipeInodeInfo } from '../../kernel/fs/pipe.ts';
import { PageRefs } from '../../kernel/mm/page_ref.ts';
import { GFP_KERNEL, PG_driver, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { insertCounters, remap_pfn_range, vm_insert_page } from '../../kernel/mm/memory.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { SignalError } from '../../kernel/signal.ts';
import { ENOMEM, SyscallError } from '../../kernel/errno.ts';
import { groupOf } from '../../kernel/exit.ts';
import type { Report } from '../../kernel/report.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import type { BinderAlloc } from '../../drivers/android/binder/binder_alloc.ts';
import { eagerCounters } from '../../drivers/android/binder/eager_common.ts';
import { DESIGNS, IDENTITY_VARIANTS, type DesignName, type DesignOptions, type IdentityVariant, type PlantedBugs } from '../../drivers/android/binder/page_mapping.ts';
import {
  BC_ENTER_LOOPER, BC_FREE_BUFFER, BC_TRANSACTION, BINDER_SET_CONTEXT_MGR, BINDER_WRITE_READ, BR_DEAD_REPLY, BR_FAILED_REPLY, BR_ONEWAY_SPAM_SUSPECT,
  BR_TRANSACTION, BR_TRANSACTION_COMPLETE, BTD_SIZE, BWR_SIZE, TF_ONE_WAY, decodeBwr, decodeTransactionData, encodeBwr, encodeTransactionData,
  type TransactionData,
} from '../../drivers/android/binder/uapi.ts';

// ==============================================================================================
// Names
// ==============================================================================================

export const SCENARIOS = ['1a', '1b', '1c', '1d', '2', '3', '4', '5'] as const;
export type ScenarioId = (typeof SCENARIOS)[number];
export type Verdict = 'vulnerable' | 'immune' | 'not-applicable';

export const SCENARIO_TITLES: Record<ScenarioId, string> = {
  '1a': 'impostor VMA: writable shared anonymous memory at the binder address',
  '1b': 'impostor VMA: a VM_PFNMAP device mapping at the binder address',
  '1c': 'impostor VMA: a MAP_HUGETLB mapping at the binder address',
  '1d': 'impostor VMA: another binder mapping (a second open of /dev/binder) at the binder address',
  '2': 'vmsplice a binder page into a pipe, then reclaim it',
  '3': 'reclaim while another CPU caches the page (planted: zap without flush)',
  '4': 'vm_insert_page on a VMA without VM_MIXEDMAP under only a read lock',
  '5': 'a VMA reference used after its lock was dropped (planted: keepVmaReference)',
};

/** `1` stands for 1a, 1b, 1c and 1d. */
export function expandScenario(s: string): ScenarioId[] {
  const t = s.trim().toLowerCase();
  if (t === '1') return ['1a', '1b', '1c', '1d'];
  if ((SCENARIOS as readonly string[]).includes(t)) return [t as ScenarioId];
  throw new RangeError(`unknown scenario "${s}" (known: 1, ${SCENARIOS.join(', ')})`);
}

/** A design under attack: the design and, for the eager designs, its identity variant. */
export interface AttackTarget {
  design: DesignName;
  variant: IdentityVariant | null;
}

const EAGER: readonly DesignName[] = DESIGNS.filter((d) => d.startsWith('eager'));

export function targetLabel(t: AttackTarget): string {
  return t.variant ? `${t.design}:${t.variant}` : t.design;
}

/**
 * Parse `fault`, `eager:vm_ops` (or `eager/vm_ops`); a bare eager design stands for all its
 * variants when `allVariants`. Throws a RangeError naming the bad part.
 */
export function parseTarget(spec: string): { design: DesignName; variant: IdentityVariant | null } {
  const [name, variant, extra] = spec.trim().split(/[:/]/);
  if (extra !== undefined) throw new RangeError(`design "${spec}" has more than one variant separator`);
  if (!(DESIGNS as readonly string[]).includes(name!)) throw new RangeError(`unknown design "${name}" (known: ${DESIGNS.join(', ')})`);
  const design = name as DesignName;
  if (variant === undefined || variant === '') return { design, variant: null };
  if (!EAGER.includes(design)) throw new RangeError(`design "${design}" has no identity variants (only ${EAGER.join(', ')} do)`);
  if (!(IDENTITY_VARIANTS as readonly string[]).includes(variant)) throw new RangeError(`unknown identity variant "${variant}" (known: ${IDENTITY_VARIANTS.join(', ')})`);
  return { design, variant: variant as IdentityVariant };
}

/** Does the name a user gave (`eager` = every eager variant) cover this target? */
export function targetMatches(spec: string, t: AttackTarget): boolean {
  const p = parseTarget(spec);
  return p.design === t.design && (p.variant === null || p.variant === t.variant);
}

/** Designs × variants: every eager design with each variant, the others alone. */
export function attackTargets(designs: readonly DesignName[] = DESIGNS, variants: readonly IdentityVariant[] = IDENTITY_VARIANTS): AttackTarget[] {
  const out: AttackTarget[] = [];
  for (const design of designs) {
    if (EAGER.includes(design)) for (const variant of variants) out.push({ design, variant });
    else out.push({ design, variant: null });
  }
  return out;
}

// ==============================================================================================
// Results
// ==============================================================================================

export interface PageEvidence {
  pfn: number;
  /** User address it was seen at, hex. */
  addr?: string;
  /** Page index in the binder mapping. */
  index?: number;
  what: string;
}

export interface VmaEvidence {
  role: 'binder' | 'impostor' | 'scratch';
  start: string;
  end: string;
  /** smaps VmFlags mnemonics. */
  flags: string;
  ops: string | null;
}

export interface ReportEvidence {
  kind: string;
  title: string;
  /** The broken contract for WARN/BUG reports that name one. */
  contract?: string;
  pfn?: number;
  comm?: string;
}

/** What one run showed. `findings` are the hazards; an empty list means none was seen. */
export interface ArmEvidence {
  findings: string[];
  pages: PageEvidence[];
  vmas: VmaEvidence[];
  reports: ReportEvidence[];
  facts: Record<string, string | number | boolean | null>;
}

export interface Evidence extends ArmEvidence {
  /** The control run (a planted bug or a direct contract violation) for scenarios 3, 4, 5. */
  control?: ArmEvidence & { planted: string };
}

export interface ScenarioResult {
  /** `eager:none`, `fault`, … */
  target: string;
  design: DesignName;
  variant: IdentityVariant | null;
  /** The scenario; `1` when 1a to 1d were asked for as one. */
  scenario: ScenarioId | '1';
  title: string;
  seed: number;
  /** The judged run had the scenario's bug planted. */
  planted: boolean;
  verdict: Verdict;
  evidence: Evidence;
  summary: string;
}

export interface ScenarioOptions {
  design: DesignName;
  /** For the eager designs (default `mapped`, the shipped C check). */
  variant?: IdentityVariant | null;
  /** A scenario id, or 1 for 1a+1b+1c combined. */
  scenario: ScenarioId | number | string;
  seed?: number;
  /** Judge the run with the scenario's planted bug (3, 5) instead of the shipped design. */
  plant?: boolean;
  /** CPUs of the emulated machine (default 2, at least 2: scenario 3's reader runs on CPU 1). */
  cpus?: number;
  /** Cost model of the machine and kernel (hwCosts, clockGhz, costs); default the built-in one. */
  kernel?: Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs'>;
  /**
   * The engine every kernel of the scenario runs on (default deterministic). On the parallel
   * engine the verdict holds for the interleaving that run had, which no seed reproduces.
   */
  engine?: KernelEngine;
}

/** What every kernel of a scenario is built with and run on. */
interface WorldEnv {
  seed: number;
  cpus: number;
  kernel: Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs'>;
  engine: KernelEngine;
}

export const ATTACK_MIN_CPUS = 2;

// ==============================================================================================
// The world: a kernel, binder, and helpers the programs share
// ==============================================================================================

const PAGE = 4096;
/** The receiver's binder mapping: 2 MiB at a 2 MiB boundary, so a hugetlb impostor fits exactly. */
const BINDER_BASE = 0x4000_0000;
const BINDER_SIZE = 2 << 20;
/** Pages of the large transaction whose installation the impostor races. */
const RACE_PAGES = 160;
/** Pages left on the LRU for the reclaim run. */
const RECLAIM_PAGES = 8;
/** Poll period of the coordination flags (cycles of nanosleep). */
const NAP = 2_000;
const STEP_LIMIT = 400_000;
const MARK = 0x5a5a5a5a;
const IMPOSTOR_MARK = 0x1badf00d;

interface World {
  k: Kernel;
  engine: KernelEngine;
  dev: BinderDevice;
  target: AttackTarget;
  /** Frames the receiver's binder allocator was given and has not freed since. */
  frames: Set<number>;
  recv: { pid: number; mm: MmStruct; alloc: BinderAlloc } | null;
  /** The impostor VMA once mapped. */
  impostor: VmArea | null;
  /** The receiver's binder VMA as mapped. */
  binderVma: VmaEvidence | null;
}

function designOptions(t: AttackTarget, bugs: PlantedBugs): DesignOptions {
  return t.variant ? { design: t.design, identity: t.variant, bugs } : { design: t.design, bugs };
}

function makeWorld(t: AttackTarget, env: WorldEnv, bugs: PlantedBugs): World {
  const k = new Kernel({ ...env.kernel, cpus: env.cpus, memoryBytes: 64 << 20, seed: env.seed });
  const dev = new BinderDevice(k, { design: designOptions(t, bugs) });
  const w: World = { k, engine: env.engine, dev, target: t, frames: new Set(), recv: null, impostor: null, binderVma: null };
  registerPfnmapDevice(w);
  // A frame binder gave back is binder's no more (it may come back as someone else's page).
  const hooks = k.pages.hooks;
  const onFree = hooks.onFree;
  hooks.onFree = (pfn, order) => {
    for (let p = pfn; p < pfn + (1 << order); p++) w.frames.delete(p);
    onFree?.(pfn, order);
  };
  return w;
}

/**
 * /dev/attack-pfnmap: a device whose ->mmap maps its own frames with remap_pfn_range (special
 * PTEs in a VM_IO|VM_PFNMAP VMA) and whose ->fault is SIGBUS, like many real drivers.
 */
const PFNMAP_DEV = '/dev/attack-pfnmap';
function registerPfnmapDevice(w: World): void {
  const k = w.k;
  let refs: PageRefs | null = null;
  const frames: number[] = [];
  const vmOps: VmOperations = { name: 'attack_pfnmap_vm_ops', fault: (_vmf: VmFault) => VM_FAULT_SIGBUS };
  const fops: FileOperations = {
    name: 'attack_pfnmap_fops',
    *mmap(_file: File, vma: VmArea) {
      if (!refs) refs = new PageRefs(k, `${PFNMAP_DEV} pages`);
      vma.vm_ops = vmOps;
      for (let i = 0; i < vma.pages; i++) {
        if (frames[i] === undefined) {
          const pfn = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'attack_pfnmap_alloc');
          if (pfn < 0) return -ENOMEM;
          k.pages.flags[pfn] |= PG_driver;
          refs.noteGet(pfn);
          frames[i] = pfn;
          k.machine.phys.u8.fill(0xd0, pfn * PAGE, pfn * PAGE + PAGE);
        }
        const r = yield* remap_pfn_range(k, vma, vma.vm_start + i * PAGE, frames[i]!, PAGE);
        if (r) return r;
      }
      return 0;
    },
  };
  k.devices.set(PFNMAP_DEV, { open: () => new File(k, new Inode(k, 'chr', [10, 61]), fops, PFNMAP_DEV) });
}

/** Remember every frame the receiver's allocator is given (so a PTE can be told to map one). */
function trackFrames(w: World, alloc: BinderAlloc): void {
  const orig = alloc.allocFrame.bind(alloc);
  alloc.allocFrame = (site: string): number => {
    const pfn = orig(site);
    if (pfn >= 0) w.frames.add(pfn);
    return pfn;
  };
}


const hex = (n: number): string => `0x${n.toString(16)}`;

function vmaEvidence(v: VmArea, role: VmaEvidence['role']): VmaEvidence {
  return { role, start: hex(v.vm_start), end: hex(v.vm_end), flags: vmFlagNames(v.vm_flags), ops: v.vm_ops?.name ?? null };
}

function reportEvidence(r: Report): ReportEvidence {
  const e: ReportEvidence = { kind: r.kind, title: r.title };
  if (typeof r.data.contract === 'string') e.contract = r.data.contract;
  if (typeof r.data.pfn === 'number') e.pfn = r.data.pfn;
  if (r.comm) e.comm = r.comm;
  return e;
}

/** Contracts of vm_insert_page (kernel/mm/memory.ts). */
const INSERT_CONTRACTS = new Set(['vm_insert_page-mixedmap', 'mixedmap-change', 'vm_insert_page-lock']);
const isInsertReport = (r: Report): boolean => INSERT_CONTRACTS.has(String(r.data.contract)) || /vm_insert_page/.test(r.title);
const isKasan = (r: Report): boolean => r.kind === 'KASAN';
const isLifetimeReport = (r: Report): boolean => r.data.contract === 'vma-lifetime' || r.data.contract === 'vm_insert_page-lock' || /freed VMA|used after its lifetime/.test(r.title);

function run(w: World): { hung: string[] } {
  const r = w.k.runOn(w.engine, { maxSteps: STEP_LIMIT });
  const hung = [...w.k.tasks.values()].map((t) => `${t.comm}/${t.pid} ${t.state}${t.waitingFor ? ` (${t.waitingFor})` : ''}`);
  if (r.reason !== 'done') hung.unshift(`run stopped: ${r.reason}`);
  return { hung };
}

function* nap(u: User, until: () => boolean): KGen {
  while (!until()) yield* u.sleep(NAP);
}

const dead = (t: Task | null): boolean => t !== null && t.state === 'dead';

/** Run `f`, turning a signal into its name (SIGBUS/SIGSEGV). */
function* attempt<T>(f: () => KGen<T>): KGen<T | 'SIGBUS' | 'SIGSEGV'> {
  try {
    return yield* f();
  } catch (e) {
    if (e instanceof SignalError) return e.signo === 11 ? 'SIGSEGV' : 'SIGBUS';
    throw e;
  }
}

// ==============================================================================================
// A minimal binder client (the raw BINDER_WRITE_READ protocol, in the caller's user memory)
// ==============================================================================================

const OUT_CAP = 4096;
const IN_CAP = 4096;

class Wire {
  private base = 0;
  private entered = false;

  constructor(
    readonly u: User,
    readonly fd: number,
  ) {}

  /** The bwr, command and return areas, then room for `payloadBytes` of payload. */
  *init(payloadBytes: number): KGen {
    const len = Math.ceil((BWR_SIZE + OUT_CAP + IN_CAP + payloadBytes + 64) / PAGE) * PAGE;
    this.base = yield* this.u.mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  }

  private get payloadArea(): number {
    return this.base + 64 + OUT_CAP + IN_CAP;
  }

  *talk(out: Uint8Array, read: boolean): KGen<Uint8Array> {
    const u = this.u;
    const outA = this.base + 64;
    const inA = outA + OUT_CAP;
    if (out.length) yield* u.write(outA, out);
    yield* u.write(this.base, encodeBwr({ write_size: out.length, write_consumed: 0, write_buffer: outA, read_size: read ? IN_CAP : 0, read_consumed: 0, read_buffer: inA }));
    yield* u.ioctl(this.fd, BINDER_WRITE_READ, this.base);
    const bwr = decodeBwr(yield* u.read(this.base, BWR_SIZE));
    return bwr.read_consumed ? yield* u.read(inA, bwr.read_consumed) : new Uint8Array(0);
  }

  private static *returns(b: Uint8Array): Generator<[number, Uint8Array]> {
    const v = new DataView(b.buffer, b.byteOffset, b.length);
    for (let p = 0; p + 4 <= b.length; ) {
      const cmd = v.getUint32(p, true);
      const n = (cmd >>> 16) & 0x3fff;
      yield [cmd, b.subarray(p + 4, p + 4 + n)];
      p += 4 + n;
    }
  }

  /** A oneway transaction to `handle`; how the driver answered. */
  *sendOneway(handle: number, data: Uint8Array): KGen<'ok' | 'dead' | 'failed'> {
    const pay = this.payloadArea;
    if (data.length) yield* this.u.write(pay, data);
    const c = new Uint8Array(4 + BTD_SIZE);
    new DataView(c.buffer).setUint32(0, BC_TRANSACTION, true);
    encodeTransactionData({ target: handle, cookie: 0, code: 1, flags: TF_ONE_WAY, sender_pid: 0, sender_euid: 0, data_size: data.length, offsets_size: 0, buffer: pay, offsets: pay + Math.ceil(data.length / 8) * 8 }, c, 4);
    let bytes = yield* this.talk(c, true);
    for (;;) {
      for (const [cmd] of Wire.returns(bytes)) {
        if (cmd === BR_TRANSACTION_COMPLETE || cmd === BR_ONEWAY_SPAM_SUSPECT) return 'ok';
        if (cmd === BR_DEAD_REPLY) return 'dead';
        if (cmd === BR_FAILED_REPLY) return 'failed';
      }
      bytes = yield* this.talk(new Uint8Array(0), true);
    }
  }

  /** Wait for the next BR_TRANSACTION (entering the looper first). */
  *receive(): KGen<TransactionData> {
    let out = new Uint8Array(0);
    if (!this.entered) {
      out = new Uint8Array(4);
      new DataView(out.buffer).setUint32(0, BC_ENTER_LOOPER, true);
      this.entered = true;
    }
    for (;;) {
      const bytes = yield* this.talk(out, true);
      out = new Uint8Array(0);
      for (const [cmd, payload] of Wire.returns(bytes)) if (cmd === BR_TRANSACTION) return decodeTransactionData(payload);
    }
  }

  *free(ptr: number): KGen {
    const c = new Uint8Array(12);
    const v = new DataView(c.buffer);
    v.setUint32(0, BC_FREE_BUFFER, true);
    v.setBigUint64(4, BigInt(ptr), true);
    yield* this.talk(c, false);
  }
}

/** A payload of `pages` pages: each 32-bit word is MARK ^ its page index. */
function payload(pages: number): Uint8Array {
  const b = new Uint8Array(pages * PAGE);
  const v = new DataView(b.buffer);
  for (let i = 0; i < b.length; i += 4) v.setUint32(i, (MARK ^ Math.floor(i / PAGE)) >>> 0, true);
  return b;
}

/** The receiver: open binder, map it read-only at BINDER_BASE, become the context manager. */
function* receiverSetup(w: World, u: User, payloadBytes = PAGE): KGen<Wire> {
  const fd = yield* u.open('/dev/binder');
  yield* u.mmap(BINDER_BASE, BINDER_SIZE, PROT_READ, MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED_NOREPLACE, fd, 0);
  yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
  const proc = w.dev.procOf(u.pid);
  if (!proc) throw new Error('attack: the receiver has no binder proc');
  trackFrames(w, proc.alloc);
  w.recv = { pid: u.pid, mm: u.task.mm!, alloc: proc.alloc };
  const vma = u.task.mm!.vma_lookup(BINDER_BASE);
  if (vma) w.binderVma = vmaEvidence(vma, 'binder');
  const wire = new Wire(u, fd);
  yield* wire.init(payloadBytes);
  return wire;
}

function* senderSetup(u: User, payloadBytes: number): KGen<Wire> {
  const fd = yield* u.open('/dev/binder');
  const wire = new Wire(u, fd);
  yield* wire.init(payloadBytes);
  return wire;
}

/** Run the shrinker from this task (direct reclaim) over every binder LRU page. */
function* shrinkAll(w: World, u: User): KGen<number> {
  return yield* u.call('binder_shrink_scan', function* () {
    return yield* w.dev.shrink(1 << 20);
  });
}

// ---- impostors -----------------------------------------------------------------------------

type ImpostorKind = 'anon' | 'pfnmap' | 'hugetlb' | 'binder';
type ImpostorScenario = '1a' | '1b' | '1c' | '1d';
const IMPOSTOR_OF: Record<ImpostorScenario, ImpostorKind> = { '1a': 'anon', '1b': 'pfnmap', '1c': 'hugetlb', '1d': 'binder' };
const IMPOSTOR_TEXT: Record<ImpostorKind, string> = {
  anon: 'shared anonymous RW memory',
  pfnmap: 'a VM_PFNMAP device mapping',
  hugetlb: 'a MAP_HUGETLB mapping',
  binder: "another binder file's mapping",
};

/** Map the impostor over the whole binder range with MAP_FIXED (binder's ->close runs). */
function* mapImpostor(w: World, u: User, kind: ImpostorKind): KGen<number> {
  let a: number;
  if (kind === 'anon') a = yield* u.mmap(BINDER_BASE, BINDER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
  else if (kind === 'hugetlb') a = yield* u.mmap(BINDER_BASE, BINDER_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED);
  else if (kind === 'binder') {
    // Same vm_ops as the original (eager designs), but another allocator's private data.
    const fd = yield* u.open('/dev/binder');
    a = yield* u.mmap(BINDER_BASE, BINDER_SIZE, PROT_READ, MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED, fd, 0);
  } else {
    const fd = yield* u.open(PFNMAP_DEV);
    a = yield* u.mmap(BINDER_BASE, BINDER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
  }
  w.impostor = u.task.mm!.vma_lookup(BINDER_BASE);
  return a;
}

interface Leaf {
  addr: number;
  pfn: number;
  level: number;
  writable: boolean;
  special: boolean;
}

/** Present user leaf entries of `mm` in [start, end). */
function leaves(w: World, mm: MmStruct, start: number, end: number): Leaf[] {
  const pt = w.k.pt;
  const out: Leaf[] = [];
  if (mm.pgd === 0) return out;
  pt.forEachLeaf(mm, start, end, (addr, ptep, level) => {
    const lo = pt.lo(ptep);
    const hi = pt.hi(ptep);
    if (!(lo & _PAGE_PRESENT) || !(lo & _PAGE_USER)) return;
    out.push({ addr, pfn: ptePfn(lo, hi), level, writable: (lo & _PAGE_RW) !== 0, special: (lo & _PAGE_SPECIAL) !== 0 });
  });
  return out;
}

function newArm(): ArmEvidence {
  return { findings: [], pages: [], vmas: [], reports: [], facts: {} };
}

function addFinding(a: ArmEvidence, f: string): void {
  if (!a.findings.includes(f)) a.findings.push(f);
}

/** Reports filed since `from`, those matching `keep` go to the evidence. */
function collectReports(w: World, a: ArmEvidence, from: number, keep: (r: Report) => boolean): Report[] {
  const rs = w.k.reports.reports.slice(from).filter(keep);
  for (const r of rs) a.reports.push(reportEvidence(r));
  return rs;
}

/** A report concerns the impostor when it names its VMA. */
function concernsImpostor(w: World, r: Report): boolean {
  return w.impostor !== null && r.data.vma === w.impostor.id;
}

/** The eager designs' own diagnostic counters (evidence only; verdicts never read them). */
function eagerFacts(w: World, arm: ArmEvidence): void {
  if (!w.recv || !w.target.design.startsWith('eager')) return;
  const c = eagerCounters(w.recv.alloc);
  arm.facts.driverIdentityRefusals = c.identityRefused;
  arm.facts.driverNoVma = c.noVma;
}

// ==============================================================================================
// Scenario 1: the impostor VMA
// ==============================================================================================

interface InstallObs {
  arm: ArmEvidence;
  /** The swap happened while the sender still had pages to install. */
  raceWon: boolean;
}

/**
 * The install run: the receiver swaps in the impostor while the sender installs (or, for a
 * design that maps at delivery, before it reads the transaction); then the impostor's entries.
 */
function installRun(t: AttackTarget, env: WorldEnv, kind: ImpostorKind, bugs: PlantedBugs = {}): InstallObs {
  const w = makeWorld(t, env, bugs);
  const k = w.k;
  const arm = newArm();
  const st = { ready: false, senderDone: false, send: 'not sent', swappedAtInstalled: -1, swappedBeforeSenderDone: false, installedAtEnd: -1, deliveryAttempted: false, delivered: false };
  let sender: Task | null = null;
  let receiverTask: Task | null = null;
  const from = k.reports.reports.length;

  receiverTask = k.spawn(
    function* receiver(u: User) {
      const wire = yield* receiverSetup(w, u);
      st.ready = true;
      // Poll the first page of the coming buffer until it maps (the sender is installing) or
      // the sender is done without it being mapped (a design that installs at delivery).
      for (;;) {
        if (st.senderDone || dead(sender)) break;
        const r = yield* attempt(() => u.load8(BINDER_BASE));
        if (r !== 'SIGBUS' && r !== 'SIGSEGV') break;
      }
      st.swappedAtInstalled = w.recv!.alloc.pages.filter((pfn) => pfn >= 0).length;
      st.swappedBeforeSenderDone = !st.senderDone && !dead(sender);
      yield* mapImpostor(w, u, kind);
      yield* nap(u, () => st.senderDone || dead(sender));
      if (st.send === 'ok') {
        st.deliveryAttempted = true;
        yield* wire.receive();
        st.delivered = true;
      }
      inspectInstall(w, arm);
      // A binder frame writable through the impostor: write through it and see whether the
      // kernel's view of the frame changed.
      for (const l of leaves(w, u.task.mm!, BINDER_BASE, BINDER_BASE + BINDER_SIZE)) {
        if (!w.frames.has(l.pfn) || !l.writable) continue;
        const r = yield* attempt(() => u.store32(l.addr, IMPOSTOR_MARK));
        const seen = k.machine.phys.readN(l.pfn * PAGE, 4) >>> 0;
        if (r !== 'SIGBUS' && r !== 'SIGSEGV' && seen === IMPOSTOR_MARK) {
          addFinding(arm, 'binder-page-written-by-user');
          arm.pages.push({ pfn: l.pfn, addr: hex(l.addr), what: `the receiver wrote 0x${IMPOSTOR_MARK.toString(16)} into binder's frame through the impostor` });
        }
        break;
      }
    },
    { cpu: 1, comm: 'receiver' },
  );
  sender = k.spawn(
    function* sender(u: User) {
      const data = payload(RACE_PAGES);
      const wire = yield* senderSetup(u, data.length);
      yield* nap(u, () => st.ready);
      st.send = yield* wire.sendOneway(0, data);
      st.senderDone = true;
    },
    { cpu: 0, comm: 'sender' },
  );
  const { hung } = run(w);
  // A receiver killed (or stuck) before it could look: its mm is still there, look now.
  inspectInstall(w, arm);
  st.installedAtEnd = w.recv?.alloc.stats.pagesInstalled ?? -1; // (pages the allocator ever gave a frame)

  const reports = collectReports(w, arm, from, (r) => r.kind !== 'signal');
  for (const r of reports) {
    if (concernsImpostor(w, r)) {
      addFinding(arm, r.kind === 'BUG' ? 'kernel-bug-on-impostor' : 'report-on-impostor');
      if (isInsertReport(r)) addFinding(arm, 'vm_insert_page-on-impostor');
    }
    if (isKasan(r)) addFinding(arm, 'use-after-free');
  }
  arm.facts.send = st.send;
  arm.facts.delivered = st.delivered;
  arm.facts.pagesInstalledBeforeSwap = st.swappedAtInstalled;
  arm.facts.pagesInstalledInAll = st.installedAtEnd;
  arm.facts.senderKilled = sender.killedBy ? sender.killedBy.title : null;
  arm.facts.receiverKilled = receiverTask.killedBy ? receiverTask.killedBy.title : null;
  if (hung.length) arm.facts.hung = hung.join('; ');
  // The race is won when the impostor was in place while binder still had pages to map: the
  // swap came before the sender was done, or the transaction was delivered after it (a design
  // that maps at delivery).
  const raceWon = st.swappedBeforeSenderDone || st.deliveryAttempted;
  eagerFacts(w, arm);
  arm.facts.raceWon = raceWon;
  return { arm, raceWon };
}

/** What the impostor maps now: binder frames, writability, page sizes, refcounted in PFNMAP. */
function inspectInstall(w: World, arm: ArmEvidence): void {
  if (arm.facts.inspected === true || !w.recv || w.recv.mm.dead || w.recv.mm.pgd === 0) return;
  arm.facts.inspected = true;
  const v = w.impostor;
  const mm = w.recv.mm;
  if (v) arm.vmas.push(vmaEvidence(v, 'impostor'));
  let binderPtes = 0;
  for (const l of leaves(w, mm, BINDER_BASE, BINDER_BASE + BINDER_SIZE)) {
    if (!w.frames.has(l.pfn)) continue;
    binderPtes++;
    addFinding(arm, 'binder-page-in-foreign-vma');
    if (l.writable) addFinding(arm, 'binder-page-writable');
    if (v && v.vm_flags & VM_PFNMAP && !l.special) addFinding(arm, 'refcounted-page-in-pfnmap');
    if (v && v.vm_flags & VM_HUGETLB && l.level === 1) addFinding(arm, '4k-page-in-hugetlb');
    if (arm.pages.length < 4) arm.pages.push({ pfn: l.pfn, addr: hex(l.addr), index: (l.addr - BINDER_BASE) / PAGE, what: `binder frame mapped by the impostor (${l.level === 1 ? '4 KiB' : '2 MiB'} ${l.writable ? 'writable' : 'read-only'}${l.special ? ' special' : ''} entry)` });
  }
  arm.facts.binderPtesInImpostor = binderPtes;
  // The invariant checker's view of the impostor (page sizes against VM_HUGETLB, special
  // entries against VM_PFNMAP, …) while it is still mapped.
  const inv = check_vm_invariants(w.k, { exactRefs: false }).problems.filter((p) => p.includes(hex(BINDER_BASE).slice(2)) || /hugetlb|pfnmap/i.test(p));
  if (inv.length) {
    addFinding(arm, 'invariant-broken');
    arm.facts.invariant = inv[0]!;
  }
  if (v) {
    arm.facts.impostorHasMixedmap = (v.vm_flags & VM_MIXEDMAP) !== 0;
  }
}

interface ReclaimObs {
  arm: ArmEvidence;
}

/**
 * The reclaim run: binder pages on the LRU (still mapped), the impostor swapped in and
 * populated, the sender's next allocation, the shrinker; then the impostor's entries again.
 */
function reclaimRun(t: AttackTarget, env: WorldEnv, kind: ImpostorKind): ReclaimObs {
  const w = makeWorld(t, env, {});
  const k = w.k;
  const arm = newArm();
  const st = { ready: false, first: 'not sent', freed: false, swapped: false, second: 'not sent', reclaimed: false, inspected: false };
  let senderTask: Task | null = null;
  const from = k.reports.reports.length;
  let before: Leaf[] = [];
  let after: Leaf[] = [];
  let lruBefore = -1;
  let lruAfter = -1;
  let shrunk = -1;
  let readBack: string = 'not read';
  let receiverTask: Task | null = null;

  receiverTask = k.spawn(
    function* receiver(u: User) {
      const wire = yield* receiverSetup(w, u);
      st.ready = true;
      const tr = yield* wire.receive();
      // Read the whole buffer (the fault designs map it now), then free it: its pages go on the
      // LRU and keep their PTEs.
      yield* u.read(tr.buffer, tr.data_size);
      yield* wire.free(tr.buffer);
      st.freed = true;
      yield* mapImpostor(w, u, kind);
      // Populate the impostor where binder's pages were (a binder impostor maps only what its
      // own allocator installs: nothing here).
      for (let i = 0; i < RECLAIM_PAGES && kind !== 'binder'; i++) {
        const a = BINDER_BASE + i * PAGE;
        if (kind === 'pfnmap') yield* attempt(() => u.load32(a));
        else yield* u.store32(a, (IMPOSTOR_MARK ^ i) >>> 0);
      }
      before = leaves(w, u.task.mm!, BINDER_BASE, BINDER_BASE + RECLAIM_PAGES * PAGE);
      st.swapped = true;
      yield* nap(u, () => st.reclaimed || dead(senderTask));
      after = leaves(w, u.task.mm!, BINDER_BASE, BINDER_BASE + RECLAIM_PAGES * PAGE);
      st.inspected = true;
      const r = yield* attempt(() => u.load32(BINDER_BASE));
      readBack = typeof r === 'string' ? r : `0x${(r >>> 0).toString(16)}`;
    },
    { cpu: 1, comm: 'receiver' },
  );
  senderTask = k.spawn(
    function* sender(u: User) {
      const wire = yield* senderSetup(u, RECLAIM_PAGES * PAGE);
      yield* nap(u, () => st.ready);
      st.first = yield* wire.sendOneway(0, payload(RECLAIM_PAGES));
      yield* nap(u, () => st.swapped || dead(receiverTask));
      st.second = yield* wire.sendOneway(0, payload(1));
      lruBefore = w.recv ? w.recv.alloc.lru.countOf(w.recv.alloc) : -1;
      shrunk = yield* shrinkAll(w, u);
      lruAfter = w.recv ? w.recv.alloc.lru.countOf(w.recv.alloc) : -1;
      st.reclaimed = true;
    },
    { cpu: 0, comm: 'sender' },
  );
  const { hung } = run(w);
  eagerFacts(w, arm);
  if (w.impostor) arm.vmas.push(vmaEvidence(w.impostor, 'impostor'));
  // Which impostor entries reclaim removed or changed (if the receiver lived to look).
  if (!st.inspected && w.recv && !w.recv.mm.dead) after = leaves(w, w.recv.mm, BINDER_BASE, BINDER_BASE + RECLAIM_PAGES * PAGE);
  for (const b of before) {
    const a = after.find((x) => x.addr === b.addr && x.level === b.level);
    if (a && a.pfn === b.pfn) continue;
    addFinding(arm, 'reclaim-zapped-foreign-page');
    if (arm.pages.length < 4) arm.pages.push({ pfn: b.pfn, addr: hex(b.addr), what: `impostor ${b.level === 1 ? '4 KiB' : '2 MiB'} entry ${a ? `now maps pfn ${a.pfn}` : 'zapped by binder reclaim'}` });
  }
  for (const r of collectReports(w, arm, from, (r) => r.kind !== 'signal')) {
    if (isKasan(r)) addFinding(arm, 'use-after-free');
    if (concernsImpostor(w, r)) addFinding(arm, r.kind === 'BUG' ? 'kernel-bug-on-impostor' : 'report-on-impostor');
  }
  arm.facts.firstSend = st.first;
  arm.facts.sendAfterSwap = st.second;
  arm.facts.lruPagesBeforeReclaim = lruBefore;
  arm.facts.pagesReclaimed = shrunk;
  arm.facts.lruPagesLeft = lruAfter;
  arm.facts.impostorEntriesBefore = before.length;
  arm.facts.impostorEntriesAfter = after.length;
  arm.facts.impostorReadAfterReclaim = readBack;
  arm.facts.reclaimerKilled = senderTask.killedBy ? senderTask.killedBy.title : null;
  if (hung.length) arm.facts.hung = hung.join('; ');
  return { arm };
}

function scenario1(t: AttackTarget, env: WorldEnv, id: ImpostorScenario): { arm: ArmEvidence; summary: string } {
  const kind = IMPOSTOR_OF[id];
  const ins = installRun(t, env, kind);
  const rec = reclaimRun(t, env, kind).arm;
  const arm = newArm();
  for (const f of ins.arm.findings) addFinding(arm, f);
  for (const f of rec.findings) addFinding(arm, f);
  arm.pages.push(...ins.arm.pages, ...rec.pages);
  arm.vmas.push(...(ins.arm.vmas.length ? ins.arm.vmas : rec.vmas));
  arm.reports.push(...dedupeReports([...ins.arm.reports, ...rec.reports]));
  for (const [key, v] of Object.entries(ins.arm.facts)) arm.facts[`install.${key}`] = v;
  for (const [key, v] of Object.entries(rec.facts)) arm.facts[`reclaim.${key}`] = v;
  const what = IMPOSTOR_TEXT[kind];
  let summary: string;
  if (arm.findings.length) {
    const bits: string[] = [];
    if (ins.arm.findings.includes('binder-page-in-foreign-vma')) bits.push(`binder frame${ins.arm.pages[0] ? ` pfn ${ins.arm.pages[0].pfn}` : ''} mapped into ${what}${ins.arm.findings.includes('binder-page-writable') ? ', writable' : ''}${ins.arm.findings.includes('binder-page-written-by-user') ? ' (the receiver changed binder\'s data)' : ''}`);
    if (ins.arm.findings.includes('4k-page-in-hugetlb')) bits.push('a 4 KiB page in the hugetlb VMA');
    if (ins.arm.findings.includes('refcounted-page-in-pfnmap')) bits.push('a refcounted page in the VM_PFNMAP VMA');
    const bug = ins.arm.reports.find((r) => r.kind === 'BUG' || r.kind === 'WARN');
    if (!ins.arm.findings.includes('binder-page-in-foreign-vma') && ins.arm.findings.some((f) => f.endsWith('on-impostor')) && bug) bits.push(`the install reached the impostor: ${bug.title}`);
    if (rec.findings.includes('reclaim-zapped-foreign-page')) bits.push(`reclaim zapped the impostor's page${rec.pages[0] ? ` pfn ${rec.pages[0].pfn}` : ''}`);
    const recBug = rec.reports.find((r) => r.kind === 'BUG' || r.kind === 'WARN');
    if (rec.findings.some((f) => f.endsWith('on-impostor')) && recBug) bits.push(`reclaim reached the impostor: ${recBug.title}`);
    if (arm.findings.includes('use-after-free')) bits.push('KASAN: use-after-free');
    summary = bits.join('; ') || arm.findings.join(', ');
  } else {
    const sent = String(ins.arm.facts.send);
    const install =
      sent === 'ok'
        ? `the transaction went through${ins.arm.facts.delivered ? ' and was delivered after the swap' : ''} without a binder page reaching it`
        : `the install was refused (sender got ${sent === 'dead' ? 'BR_DEAD_REPLY' : sent})`;
    const left = Number(rec.facts.lruPagesLeft);
    summary = `impostor (${what}) untouched: ${install}; reclaim ${left > 0 ? `skipped ${left} page(s), leaving them on the LRU` : `freed ${rec.facts.pagesReclaimed} page(s) without touching it`}`;
    if (!ins.raceWon) summary += ' (the install race was not won: inconclusive for the install)';
  }
  return { arm, summary };
}

function dedupeReports(rs: ReportEvidence[]): ReportEvidence[] {
  const seen = new Set<string>();
  return rs.filter((r) => {
    const key = `${r.kind}|${r.title}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

// ==============================================================================================
// Scenario 2: vmsplice
// ==============================================================================================

function scenario2(t: AttackTarget, env: WorldEnv): { arm: ArmEvidence; summary: string } {
  const w = makeWorld(t, env, {});
  const k = w.k;
  const arm = newArm();
  const st = { ready: false, freed: false, pressured: false };
  const from = k.reports.reports.length;
  let pipe: PipeInodeInfo | null = null;
  let held = -1;
  let vmsplice = 'not tried';
  let readBack: Uint8Array | null = null;
  let reusedWhileHeld = false;
  let freedWhileHeld = false;
  let shrunk = -1;
  let binderKeeps = false;
  let refsAfterReclaim = -1;
  const expected = payload(1);

  // Watch the page allocator: the held frame must not be handed out while the pipe has it.
  const hooks = k.pages.hooks;
  const onAlloc = hooks.onAlloc;
  hooks.onAlloc = (pfn, order, gfp) => {
    if (held >= 0 && pipe && pipe.heldPages().includes(held) && held >= pfn && held < pfn + (1 << order)) reusedWhileHeld = true;
    onAlloc?.(pfn, order, gfp);
  };
  const onFree = hooks.onFree;
  hooks.onFree = (pfn, order) => {
    if (held >= 0 && pipe && pipe.heldPages().includes(held) && held >= pfn && held < pfn + (1 << order)) freedWhileHeld = true;
    onFree?.(pfn, order);
  };

  const receiverTask = k.spawn(
    function* receiver(u: User) {
      const wire = yield* receiverSetup(w, u);
      st.ready = true;
      const tr = yield* wire.receive();
      yield* u.read(tr.buffer, tr.data_size);
      const [rfd, wfd] = yield* u.pipe();
      try {
        const n = yield* u.vmsplice(wfd, [{ base: tr.buffer, len: PAGE }]);
        vmsplice = `${n} bytes`;
      } catch (e) {
        if (!(e instanceof SyscallError)) throw e;
        vmsplice = e.code;
      }
      const f = groupOf(u.task)!.files.get(wfd);
      pipe = f ? get_pipe_info(f) : null;
      held = pipe && pipe.heldPages().length ? pipe.heldPages()[0]! : -1;
      yield* wire.free(tr.buffer);
      st.freed = true;
      yield* nap(u, () => st.pressured);
      if (held >= 0) readBack = yield* u.readFd(rfd, PAGE);
      yield* u.close(rfd);
      yield* u.close(wfd);
    },
    { cpu: 1, comm: 'receiver' },
  );
  k.spawn(
    function* sender(u: User) {
      const wire = yield* senderSetup(u, 64 * PAGE);
      yield* nap(u, () => st.ready);
      yield* wire.sendOneway(0, expected);
      yield* nap(u, () => st.freed || dead(receiverTask));
      shrunk = yield* shrinkAll(w, u);
      if (held >= 0) {
        binderKeeps = w.recv!.alloc.pages.includes(held);
        refsAfterReclaim = k.pages.refcount[held]!;
      }
      // Memory pressure: fresh anonymous pages and more binder traffic, so a freed frame would
      // be handed out again at once.
      const a = yield* u.mmap(0, 256 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 256; i++) yield* u.store32(a + i * PAGE, 0xc0ffee00 + i);
      for (let i = 0; i < 4; i++) yield* wire.sendOneway(0, payload(8));
      st.pressured = true;
    },
    { cpu: 0, comm: 'sender' },
  );
  const { hung } = run(w);
  hooks.onAlloc = onAlloc;
  hooks.onFree = onFree;

  if (w.binderVma) arm.vmas.push(w.binderVma);
  arm.facts.vmsplice = vmsplice;
  arm.facts.pagesReclaimed = shrunk;
  arm.facts.heldPfn = held;
  if (held >= 0) {
    arm.pages.push({ pfn: held, addr: hex(BINDER_BASE), index: 0, what: `binder page spliced into the pipe; after reclaim ${binderKeeps ? 'binder still holds it' : `only the pipe holds it (refcount ${refsAfterReclaim})`}` });
    arm.facts.binderKeepsPageAfterReclaim = binderKeeps;
    arm.facts.refcountAfterReclaim = refsAfterReclaim;
    const rb = readBack as Uint8Array | null;
    const same = rb !== null && rb.length === PAGE && rb.every((b, i) => b === expected[i]);
    arm.facts.readableAfterReclaim = rb !== null && rb.length > 0;
    arm.facts.pipeDataIsBinders = same;
    if (rb !== null && rb.length > 0 && !same) addFinding(arm, 'pipe-reads-foreign-data');
  }
  arm.facts.frameReusedWhileHeld = reusedWhileHeld;
  arm.facts.frameFreedWhileHeld = freedWhileHeld;
  if (reusedWhileHeld) addFinding(arm, 'frame-reused-while-pipe-holds-it');
  if (freedWhileHeld) addFinding(arm, 'frame-freed-while-pipe-holds-it');
  for (const r of collectReports(w, arm, from, (r) => r.kind !== 'signal')) if (isKasan(r)) addFinding(arm, 'use-after-free');
  if (hung.length) arm.facts.hung = hung.join('; ');

  let summary: string;
  if (arm.findings.length) summary = `pfn ${held}: ${arm.findings.join(', ')}`;
  else if (held < 0) summary = `vmsplice refused (${vmsplice}): no binder page can outlive reclaim in a pipe`;
  else summary = `pfn ${held} stayed allocated while the pipe held it (never handed out again)${arm.facts.pipeDataIsBinders ? '; the pipe still reads binder\'s data after reclaim' : ''}`;
  return { arm, summary };
}

// ==============================================================================================
// Scenario 3: zap without flush, the reader on another CPU
// ==============================================================================================

/**
 * Where the reader is while reclaim runs: still running in the mm on CPU 1 (the flush must IPI
 * it), asleep with CPU 1 idle in lazy TLB mode, or asleep while another process runs on CPU 1
 * (its PCID keeps the entries; switching back must catch up through tlb_gen).
 */
const READER_MODES = ['running', 'lazy', 'switched'] as const;
type ReaderMode = (typeof READER_MODES)[number];

function scenario3Run(w: World, mode: ReaderMode, arm: ArmEvidence): void {
  const k = w.k;
  const st = { ready: false, buf: -1, cached: false, freed: false, reclaimed: false, pfn: -1, staleAfter: 0, outcome: 'not read' as string, ipis: 0 };
  const from = k.reports.reports.length;
  let mainTask: Task | null = null;

  mainTask = k.spawn(
    function* receiver(u: User) {
      const wire = yield* receiverSetup(w, u);
      const scratch = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(scratch, 1);
      yield* u.clone(
        function* reader(r: User) {
          yield* nap(r, () => st.buf >= 0);
          yield* r.load32(st.buf); // the translation is now in CPU 1's TLB
          st.cached = true;
          if (mode === 'running') {
            // Keep running in this mm on CPU 1 (no sleep: the entry must stay where it is).
            while (!st.reclaimed) yield* r.load32(scratch);
          } else {
            yield* nap(r, () => st.reclaimed);
          }
          const v = yield* attempt(() => r.load32(st.buf));
          st.outcome = typeof v === 'string' ? v : `read 0x${(v >>> 0).toString(16)}`;
        },
        { cpu: 1, comm: 'reader' },
      );
      st.ready = true;
      const tr = yield* wire.receive();
      st.pfn = w.recv!.alloc.pages[0]!;
      st.buf = tr.buffer;
      yield* nap(u, () => st.cached);
      yield* wire.free(tr.buffer);
      st.freed = true;
    },
    { cpu: 0, comm: 'receiver' },
  );
  if (mode === 'switched') {
    k.spawn(
      function* other(u: User) {
        const a = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        yield* nap(u, () => st.cached);
        while (!st.reclaimed) yield* u.store32(a, 1);
      },
      { cpu: 1, comm: 'other' },
    );
  }
  k.spawn(
    function* sender(u: User) {
      const wire = yield* senderSetup(u, PAGE);
      yield* nap(u, () => st.ready);
      yield* wire.sendOneway(0, payload(1));
      yield* nap(u, () => st.freed || dead(mainTask));
      const ipis = k.tlb.stats.ipis;
      yield* shrinkAll(w, u);
      st.ipis = k.tlb.stats.ipis - ipis;
      // What CPU 1 still caches for the buffer's page right after reclaim returned.
      const va = BigInt(st.buf);
      st.staleAfter = tlbEntries(k.machine.cpu(1)).filter((e) => e.va === va && !e.global).length;
      st.reclaimed = true;
    },
    { cpu: 0, comm: 'sender' },
  );
  const { hung } = run(w);
  arm.facts[`${mode}.reclaimIpis`] = st.ipis;
  arm.facts[`${mode}.cpu1EntriesAfterReclaim`] = st.staleAfter;
  arm.facts[`${mode}.readerOutcome`] = st.outcome;
  if (st.pfn >= 0 && !arm.pages.length) arm.pages.push({ pfn: st.pfn, addr: hex(st.buf), index: 0, what: `binder page read on CPU 1 before and after reclaim (${mode})` });
  for (const r of collectReports(w, arm, from, (r) => r.kind !== 'signal')) {
    if (isKasan(r)) {
      addFinding(arm, 'use-after-free');
      addFinding(arm, `use-after-free-${mode}`);
    }
  }
  // A CPU running the mm must hold no translation once the flush returned (a lazy or switched
  // CPU may: its ASID slot is behind the mm's tlb_gen and is flushed before use).
  if (mode === 'running' && st.staleAfter > 0) addFinding(arm, 'stale-tlb-entry-after-reclaim');
  if (hung.length) arm.facts[`${mode}.hung`] = hung.join('; ');
}

function scenario3Arm(t: AttackTarget, env: WorldEnv, bugs: PlantedBugs): ArmEvidence {
  const arm = newArm();
  for (const mode of READER_MODES) {
    const w = makeWorld(t, env, bugs);
    scenario3Run(w, mode, arm);
    if (!arm.vmas.length && w.binderVma) arm.vmas.push(w.binderVma);
  }
  arm.reports = dedupeReports(arm.reports);
  return arm;
}

// ==============================================================================================
// Scenario 4: the vm_insert_page contract
// ==============================================================================================

/** Ordinary traffic: send, read, free, reclaim, send again, read again. */
function trafficArm(t: AttackTarget, env: WorldEnv, bugs: PlantedBugs): ArmEvidence & { inserts: number } {
  const w = makeWorld(t, env, bugs);
  const k = w.k;
  const arm = newArm();
  const st = { ready: false, sends: [] as string[], delivered: 0, round: 0, done: false };
  const from = k.reports.reports.length;
  let senderTask: Task | null = null;
  const recvTask = k.spawn(
    function* receiver(u: User) {
      const wire = yield* receiverSetup(w, u);
      st.ready = true;
      for (let i = 0; i < 2; i++) {
        // Read only what was sent (a failed send must not leave the receiver waiting forever).
        yield* nap(u, () => st.delivered > i || st.done || dead(senderTask));
        if (st.delivered <= i) break;
        const tr = yield* wire.receive();
        yield* u.read(tr.buffer, tr.data_size);
        yield* wire.free(tr.buffer);
        st.round = i + 1;
      }
    },
    { cpu: 1, comm: 'receiver' },
  );
  senderTask = k.spawn(
    function* sender(u: User) {
      const wire = yield* senderSetup(u, 4 * PAGE);
      yield* nap(u, () => st.ready);
      for (const pages of [1, 4]) {
        const r = yield* wire.sendOneway(0, payload(pages));
        st.sends.push(r);
        if (r !== 'ok') break;
        st.delivered++;
        yield* nap(u, () => st.round >= st.delivered || dead(recvTask));
        // Reclaim between the two, so the second transaction installs pages again.
        if (pages === 1) yield* shrinkAll(w, u);
      }
      st.done = true;
    },
    { cpu: 0, comm: 'sender' },
  );
  const { hung } = run(w);
  const ic = insertCounters(k);
  const inserts = ic.inserted + ic.busy + ic.errors;
  for (const r of collectReports(w, arm, from, (r) => r.kind !== 'signal')) {
    if (isInsertReport(r)) addFinding(arm, `contract:${String(r.data.contract ?? 'vm_insert_page')}`);
    if (isLifetimeReport(r)) addFinding(arm, 'vma-used-without-its-lock');
    if (isKasan(r)) addFinding(arm, 'use-after-free');
  }
  if (w.binderVma) arm.vmas.push(w.binderVma);
  arm.facts.sends = st.sends.join(',');
  arm.facts.vmInsertPageCalls = inserts;
  arm.facts.pfnInserts = ic.pfn;
  if (hung.length) arm.facts.hung = hung.join('; ');
  return Object.assign(arm, { inserts });
}

/** The checker itself: vm_insert_page on a plain anonymous VMA under the mmap read lock. */
function contractControl(env: WorldEnv): ArmEvidence & { planted: string } {
  const k = new Kernel({ ...env.kernel, cpus: 1, memoryBytes: 16 << 20, seed: env.seed });
  const arm = newArm();
  k.spawn(function* victim(u: User) {
    const a = yield* u.mmap(0, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
    const mm = u.task.mm!;
    yield* u.call('driver_ioctl', function* (kk) {
      const vma = mm.vma_lookup(a)!;
      arm.vmas.push(vmaEvidence(vma, 'scratch'));
      const pfn = kk.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'driver page');
      kk.pages.flags[pfn] |= PG_driver;
      yield* kk.locks.mmap_read_lock(mm, 'driver_ioctl');
      try {
        return vm_insert_page(kk, vma, a, pfn, 'driver_ioctl');
      } finally {
        kk.locks.mmap_read_unlock(mm);
      }
    });
  });
  k.runOn(env.engine, { maxSteps: 100_000 });
  for (const r of k.reports.reports) {
    if (r.kind === 'signal') continue;
    arm.reports.push(reportEvidence(r));
    if (isInsertReport(r)) addFinding(arm, `contract:${String(r.data.contract ?? 'vm_insert_page')}`);
  }
  return Object.assign(arm, { planted: 'vm_insert_page(VMA without VM_MIXEDMAP) under mmap_read_lock' });
}

// ==============================================================================================
// Scenario 5: a VMA reference kept past its lock
// ==============================================================================================

// trafficArm above, run with and without PlantedBugs.keepVmaReference: the first transaction
// installs page 0 (an eager design finds the VMA under its lock, and the planted bug keeps it);
// reclaim runs; the second transaction installs pages again, and the planted bug uses the kept
// VMA (or Rust VmaMixedMap) with no lock held — the C path's vm_insert_page lock check or the
// Rust borrow check reports it. The fault designs never look a VMA up: the bug has no effect.

// ==============================================================================================
// Running
// ==============================================================================================

function fingerprint(a: ArmEvidence): string {
  return JSON.stringify([a.findings, a.reports.map((r) => r.title), a.facts.vmInsertPageCalls ?? null]);
}

function judge(findings: string[]): Verdict {
  return findings.length ? 'vulnerable' : 'immune';
}

/** Run one scenario against one design (and variant). */
export function runScenario(o: ScenarioOptions): ScenarioResult {
  if (!(DESIGNS as readonly string[]).includes(o.design)) throw new RangeError(`unknown design "${String(o.design)}" (known: ${DESIGNS.join(', ')})`);
  const eager = EAGER.includes(o.design);
  if (o.variant && !eager) throw new RangeError(`design "${o.design}" has no identity variants (only ${EAGER.join(', ')} do)`);
  if (o.variant && !(IDENTITY_VARIANTS as readonly string[]).includes(o.variant)) throw new RangeError(`unknown identity variant "${String(o.variant)}" (known: ${IDENTITY_VARIANTS.join(', ')})`);
  const target: AttackTarget = { design: o.design, variant: eager ? (o.variant ?? 'mapped') : null };
  const seed = o.seed ?? 1;
  const cpus = o.cpus ?? ATTACK_MIN_CPUS;
  if (!Number.isInteger(cpus) || cpus < ATTACK_MIN_CPUS) throw new RangeError(`the attack scenarios need at least ${ATTACK_MIN_CPUS} CPUs (scenario 3's reader runs on CPU 1), got ${cpus}`);
  const env: WorldEnv = { seed, cpus, kernel: o.kernel ?? {}, engine: o.engine ?? 'deterministic' };
  const ids = expandScenario(String(o.scenario));
  if (ids.length > 1) return combine(ids.map((id) => runScenario({ ...o, scenario: id })));
  const id = ids[0]!;
  const base = { target: targetLabel(target), design: target.design, variant: target.variant, scenario: id, title: SCENARIO_TITLES[id], seed };

  switch (id) {
    case '1a':
    case '1b':
    case '1c':
    case '1d': {
      const { arm, summary } = scenario1(target, env, id);
      return { ...base, planted: false, verdict: judge(arm.findings), evidence: arm, summary };
    }
    case '2': {
      const { arm, summary } = scenario2(target, env);
      return { ...base, planted: false, verdict: judge(arm.findings), evidence: arm, summary };
    }
    case '3': {
      const shipped = scenario3Arm(target, env, {});
      const planted = scenario3Arm(target, env, { zapWithoutFlush: true });
      const judged = o.plant ? planted : shipped;
      const other = o.plant ? shipped : planted;
      const evidence: Evidence = { ...judged, control: { ...other, planted: o.plant ? 'none (the design as shipped)' : 'zapWithoutFlush' } };
      let verdict = judge(judged.findings);
      if (fingerprint(shipped) === fingerprint(planted) && !judged.findings.length) verdict = 'not-applicable';
      const kasan = judged.reports.find((r) => r.kind === 'KASAN');
      const outcomes = READER_MODES.map((m) => `${m}: ${judged.facts[`${m}.readerOutcome`]}`).join(', ');
      const caught = READER_MODES.filter((m) => other.findings.includes(`use-after-free-${m}`));
      const summary =
        verdict === 'vulnerable'
          ? `${kasan ? kasan.title : judged.findings.join(', ')} (pfn ${judged.pages[0]?.pfn ?? '?'}; reader on CPU 1 ${outcomes})`
          : `pfn ${judged.pages[0]?.pfn ?? '?'} freed only after CPU 1 could no longer use it (reclaim sent ${judged.facts['running.reclaimIpis']} IPI to the running reader; reader ${outcomes}); ` +
            (caught.length ? `planted zap-without-flush: ${other.reports.find((r) => r.kind === 'KASAN')?.title ?? 'KASAN report'} (${caught.join(', ')})` : 'planted zap-without-flush: not detected');
      return { ...base, planted: !!o.plant, verdict, evidence, summary };
    }
    case '4': {
      const traffic = trafficArm(target, env, {});
      const race = installRun(target, env, 'anon');
      const arm = newArm();
      for (const f of traffic.findings) addFinding(arm, f);
      const raceContracts = race.arm.reports.filter((r) => r.contract && INSERT_CONTRACTS.has(r.contract));
      for (const r of raceContracts) addFinding(arm, `contract:${r.contract}`);
      arm.reports.push(...dedupeReports([...traffic.reports, ...raceContracts]));
      arm.vmas.push(...traffic.vmas, ...race.arm.vmas);
      arm.facts.vmInsertPageCalls = traffic.inserts;
      arm.facts.pfnInserts = traffic.facts.pfnInserts ?? 0;
      arm.facts.impostorRaceWon = race.raceWon;
      arm.facts.impostorSend = race.arm.facts.send ?? null;
      const control = contractControl(env);
      const evidence: Evidence = { ...arm, control };
      let verdict = judge(arm.findings);
      if (verdict === 'immune' && traffic.inserts === 0) verdict = 'not-applicable';
      const first = arm.reports.find((r) => r.contract && INSERT_CONTRACTS.has(r.contract));
      const summary =
        verdict === 'vulnerable'
          ? `${first?.title ?? arm.findings.join(', ')}${first?.contract ? ` [${first.contract}]` : ''}`
          : verdict === 'not-applicable'
            ? `the design never calls vm_insert_page (${arm.facts.pfnInserts} special PFN entries instead); control: ${control.reports[0]?.title ?? 'no report'}`
            : `${traffic.inserts} vm_insert_page calls and no contract report, the impostor race included; control: ${control.reports[0]?.title ?? 'no report'}`;
      return { ...base, planted: false, verdict, evidence, summary };
    }
    case '5': {
      const shipped = trafficArm(target, env, {});
      const planted = trafficArm(target, env, { keepVmaReference: true });
      const judged = o.plant ? planted : shipped;
      const other = o.plant ? shipped : planted;
      const strip = (a: ArmEvidence & { inserts: number }): ArmEvidence => ({ findings: a.findings.filter((f) => f === 'vma-used-without-its-lock' || f === 'use-after-free'), pages: a.pages, vmas: a.vmas, reports: a.reports.filter((r) => /VMA|VmaRef|vm_insert_page/.test(r.title)), facts: a.facts });
      const j = strip(judged);
      const c = strip(other);
      const evidence: Evidence = { ...j, control: { ...c, planted: o.plant ? 'none (the design as shipped)' : 'keepVmaReference' } };
      let verdict = judge(j.findings);
      if (!j.findings.length && fingerprint(strip(shipped)) === fingerprint(strip(planted))) verdict = 'not-applicable';
      const summary =
        verdict === 'vulnerable'
          ? j.reports[0]?.title ?? j.findings.join(', ')
          : verdict === 'not-applicable'
            ? 'the design keeps no VMA: the planted bug has nothing to act on'
            : `every VMA was used under its lock; planted keepVmaReference: ${c.reports[0]?.title ?? 'not detected'}`;
      return { ...base, planted: !!o.plant, verdict, evidence, summary };
    }
  }
}

/** Scenario 1 as one result: vulnerable if any impostor got through. */
function combine(rs: ScenarioResult[]): ScenarioResult {
  const first = rs[0]!;
  const verdict: Verdict = rs.some((r) => r.verdict === 'vulnerable') ? 'vulnerable' : rs.every((r) => r.verdict === 'not-applicable') ? 'not-applicable' : 'immune';
  const evidence: Evidence = newArm();
  for (const r of rs) {
    for (const f of r.evidence.findings) addFinding(evidence, `${r.scenario}:${f}`);
    evidence.pages.push(...r.evidence.pages);
    evidence.vmas.push(...r.evidence.vmas);
    evidence.reports.push(...r.evidence.reports);
    for (const [key, v] of Object.entries(r.evidence.facts)) evidence.facts[`${r.scenario}.${key}`] = v;
  }
  return { ...first, scenario: '1', title: 'impostor VMA at the binder address (1a, 1b, 1c, 1d)', verdict, evidence, summary: rs.map((r) => `${r.scenario}: ${r.summary}`).join(' | ') };
}

export interface MatrixOptions {
  designs?: readonly DesignName[];
  variants?: readonly IdentityVariant[];
  /** Explicit targets (override designs × variants). */
  targets?: readonly AttackTarget[];
  scenarios?: readonly ScenarioId[];
  seed?: number;
  plant?: boolean;
  /** CPUs and cost model of every scenario's machine (ScenarioOptions). */
  cpus?: number;
  kernel?: ScenarioOptions['kernel'];
  engine?: KernelEngine;
  /** Called after each result (progress). */
  onResult?: (r: ScenarioResult) => void;
}

export interface AttackMatrix {
  seed: number;
  cpus: number;
  planted: boolean;
  /** Present when the scenarios ran on the parallel engine (verdicts of that run's interleaving). */
  engine?: 'parallel';
  targets: string[];
  scenarios: ScenarioId[];
  results: ScenarioResult[];
}

/** Every scenario against every target. */
export function runAttackMatrix(o: MatrixOptions = {}): AttackMatrix {
  const targets = o.targets ? [...o.targets] : attackTargets(o.designs, o.variants);
  const scenarios = o.scenarios ? [...o.scenarios] : [...SCENARIOS];
  const seed = o.seed ?? 1;
  const results: ScenarioResult[] = [];
  for (const t of targets) {
    for (const s of scenarios) {
      const r = runScenario({ design: t.design, variant: t.variant, scenario: s, seed, plant: o.plant, cpus: o.cpus, kernel: o.kernel, engine: o.engine });
      results.push(r);
      o.onResult?.(r);
    }
  }
  return { seed, cpus: o.cpus ?? ATTACK_MIN_CPUS, planted: !!o.plant, ...(o.engine === 'parallel' ? { engine: 'parallel' as const } : {}), targets: targets.map(targetLabel), scenarios, results };
}

/** Targets with at least one vulnerable verdict. */
export function vulnerableTargets(m: AttackMatrix): string[] {
  return [...new Set(m.results.filter((r) => r.verdict === 'vulnerable').map((r) => r.target))];
}
