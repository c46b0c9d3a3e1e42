/**
 * src/fuzz/ops.ts — the fuzzer's operations and their generators (fast-check arbitraries).
 *
 * A fuzz case is a Scenario: a machine shape (CPUs, memory, engine quantum), a binder design per
 * process slot, and a sequence of operations. Each operation names an actor by a selector that
 * the executor reduces modulo the actors alive at that moment (so a shrunk sequence still names
 * someone), and carries its arguments symbolically — an address is "page 5 of the window, 1 byte
 * in", "page 2 of my binder mapping", "3 pages below the top of user space" or one of the wild
 * values a kernel fuzzer throws (0, non-canonical, beyond 2^53, negative, not an integer) — so
 * that shrinking moves toward small, readable cases.
 *
 * The bad inputs are the ones syzkaller-style fuzzers use on mm and binder: unaligned and zero
 * lengths, lengths that overflow the address space, MAP_FIXED over existing mappings, addresses
 * next to TASK_SIZE (0x7ffffffff000), unknown flag bits, a binder mapping unmapped (or
 * mprotected, mremapped, madvised, mapped over) with a random length, BC_FREE_BUFFER of a buffer
 * twice, of an address inside a buffer, of an unknown address, transactions to invalid handles,
 * with unreadable payload pointers, offsets outside the data, huge sizes, unknown commands.
 */

import fc from 'fast-check';
import { DESIGNS, type DesignOptions } from '../../drivers/android/binder/page_mapping.ts';

/** Where an address points; resolved by the executor in the acting process. */
export type Addr =
  | { r: 'win'; page: number; off: number }
  | { r: 'bind'; page: number; off: number }
  | { r: 'top'; page: number; off: number }
  | { r: 'wild'; v: number };

/** A length: whole pages plus a small delta, or a wild value. */
export type Len = { pages: number; delta: number } | { wild: number };

export type Touch = { addr: Addr; kind: 'read' | 'write' | 'fetch' };

export type Op =
  | { t: 'mmap'; a: number; addr: Addr; len: Len; prot: number; flags: number; fd: 'anon' | 'binder' | 'pipe' | 'bad'; pgoff: number }
  | { t: 'munmap'; a: number; addr: Addr; len: Len }
  | { t: 'mprotect'; a: number; addr: Addr; len: Len; prot: number }
  | { t: 'mremap'; a: number; addr: Addr; old: Len; len: Len; flags: number; dest: Addr }
  | { t: 'madvise'; a: number; addr: Addr; len: Len; advice: number }
  | { t: 'touch'; a: number; addr: Addr; kind: 'read' | 'write' | 'fetch'; pages: number }
  | { t: 'fork'; a: number; keep: boolean; touches: Touch[] }
  | { t: 'clone'; a: number }
  | { t: 'spawn'; a: number }
  | { t: 'exit'; a: number }
  | { t: 'bopen'; a: number; len: Len; prot: number; shared: boolean; cm: boolean }
  | { t: 'bsend'; a: number; to: number; oneway: boolean; size: number; obj: 'none' | 'self' | 'handle'; bad: BadSend; clear: boolean }
  | { t: 'brecv'; a: number; reply: boolean; free: boolean }
  | { t: 'breply'; a: number; size: number }
  | { t: 'bfree'; a: number; which: 'held' | 'again' | 'unknown' | 'mid' | 'zero'; i: number }
  | { t: 'bcmd'; a: number; kind: BadCmd }
  | { t: 'vmsplice'; a: number; addr: Addr; len: Len; nonblock: boolean }
  | { t: 'pread'; a: number; len: number }
  | { t: 'shrink'; a: number; nr: number };

export type OpName = Op['t'];

export const BAD_SENDS = ['none', 'badbuf', 'badoffs', 'oddoffs', 'hugesize', 'hugeoffs', 'badhandle'] as const;
export type BadSend = (typeof BAD_SENDS)[number];
export const BAD_CMDS = ['unknown', 'truncated', 'badbwr', 'badread', 'badwrite', 'looper', 'threadexit', 'version', 'badioctl', 'maxthreads', 'nullbwr'] as const;
export type BadCmd = (typeof BAD_CMDS)[number];

/** The window every process's fixed mappings use (48 pages). */
export const WINDOW = 0x40000000;
export const WINDOW_PAGES = 48;
/** TASK_SIZE: the top of user space. */
export const TOP = 0x7ffffffff000;

/**
 * Wild addresses: zero, unaligned, below mmap_min_addr, TASK_SIZE and just above, non-canonical,
 * beyond 2^53 (not a safe integer), negative, not an integer at all.
 */
export const WILD_ADDRS = [0, 1, 4095, 0x1000, TOP, TOP + 4096, 2 ** 47, 2 ** 48, 2 ** 53 - 4096, 2 ** 64 - 4096, 0xffff800000000000, -4096, -1, 0.5, Number.NaN] as const;
/** Wild lengths: zero and one byte, a page less one, overflowing ones, negative, not integers. */
export const WILD_LENS = [0, 1, 4095, TOP, TOP - WINDOW, 2 ** 47, 2 ** 52, 2 ** 53 - 4096, Number.MAX_SAFE_INTEGER, 2 ** 64, 2 ** 64 - 4096, -1, -4096, 1.5, Number.NaN, Number.POSITIVE_INFINITY] as const;

export const PROT_CHOICES = [0, 1, 3, 5, 7, 2, 4, 0x8 | 1, 0x01000000 | 3, 0x10 | 1] as const;
/** Memory flag choices before the placement bits (MAP_FIXED …) are added. */
const MAP_TYPES = [0x02, 0x02, 0x02, 0x01, 0x03, 0x00, 0x0f] as const; // PRIVATE, SHARED, SHARED_VALIDATE, none, bogus type
const MAP_EXTRAS = [0, 0, 0, 0, 0x8000 /* POPULATE */, 0x4000 /* NORESERVE */, 0x40000 /* HUGETLB */, 0x0100 /* GROWSDOWN */, 0x2000 /* LOCKED */, 0x20000 /* STACK */, 0x4000000 /* unknown bit */] as const;
const PLACEMENT = [0x10, 0x10, 0x10, 0x100000, 0, 0x10 | 0x100000] as const; // FIXED, FIXED_NOREPLACE, hint, both
export const MREMAP_CHOICES = [0, 1, 1, 1 | 2, 1 | 2, 1 | 4, 2, 4, 1 | 2 | 4, 8] as const;
export const ADVICE_CHOICES = [4, 4, 8, 10, 11, 18, 19, 22, 23, 0, 1, 2, 3, 9, 16, 17, 20, 21, 24, 12, 999, -1] as const;
export const SHRINK_CHOICES = [1, 2, 8, 32, 1000] as const;

/** The designs a fuzz run mixes (the unsafe `none` identity variant is left out: its hazards are by design). */
export const FUZZ_DESIGNS: readonly DesignOptions[] = [
  { design: 'eager', identity: 'mapped' },
  { design: 'eager', identity: 'vm_ops' },
  { design: 'eager-writelock', identity: 'mapped' },
  { design: 'eager-writelock', identity: 'vm_ops' },
  { design: 'eager-deferred', identity: 'mapped' },
  { design: 'eager-deferred', identity: 'vm_ops' },
  { design: 'fault' },
  { design: 'pfnmap' },
];
// Keep the list honest when a design is added.
if (!DESIGNS.every((d) => FUZZ_DESIGNS.some((x) => x.design === d))) throw new Error('src/fuzz/ops.ts: FUZZ_DESIGNS misses a binder design');

export interface Scenario {
  cpus: number;
  memoryMiB: number;
  quantum: number;
  /** Index into FUZZ_DESIGNS for each process slot (by comm). */
  designs: number[];
  /** Processes running at the start. */
  procs: number;
  ops: Op[];
}

// ---- arbitraries --------------------------------------------------------------------------------

const actor = fc.nat(255);
const off = fc.constantFrom(0, 0, 0, 0, 0, 1, 8, 2048, 4095);
export const arbAddr: fc.Arbitrary<Addr> = fc.oneof(
  { weight: 12, arbitrary: fc.record({ r: fc.constant('win' as const), page: fc.nat(WINDOW_PAGES - 1), off }) },
  { weight: 3, arbitrary: fc.record({ r: fc.constant('bind' as const), page: fc.nat(40), off }) },
  { weight: 2, arbitrary: fc.record({ r: fc.constant('top' as const), page: fc.nat(8), off }) },
  { weight: 1, arbitrary: fc.record({ r: fc.constant('wild' as const), v: fc.constantFrom(...WILD_ADDRS) }) },
);
export const arbLen: fc.Arbitrary<Len> = fc.oneof(
  { weight: 14, arbitrary: fc.record({ pages: fc.nat(8), delta: fc.constantFrom(0, 0, 0, 0, 1, -1, 100) }) },
  { weight: 1, arbitrary: fc.record({ wild: fc.constantFrom(...WILD_LENS) }) },
);
const prot = fc.constantFrom(...PROT_CHOICES);
const mapFlags = fc.tuple(fc.constantFrom(...MAP_TYPES), fc.constantFrom(...MAP_EXTRAS), fc.constantFrom(...PLACEMENT), fc.boolean()).map(([type, extra, place, anon]) => (type | extra | place | (anon ? 0 : 0x20)) >>> 0);
const touchKind = fc.constantFrom('read' as const, 'read' as const, 'write' as const, 'write' as const, 'fetch' as const);
const txSize = fc.oneof(
  { weight: 6, arbitrary: fc.nat(256) },
  { weight: 3, arbitrary: fc.integer({ min: 257, max: 12288 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 4096, 8192, 16384, 24576, 40000) },
);

export const arbOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 9, arbitrary: fc.record({ t: fc.constant('mmap' as const), a: actor, addr: arbAddr, len: arbLen, prot, flags: mapFlags, fd: fc.constantFrom('anon' as const, 'anon' as const, 'anon' as const, 'anon' as const, 'anon' as const, 'binder' as const, 'pipe' as const, 'bad' as const), pgoff: fc.constantFrom(0, 0, 0, 1, 7, 100, 2 ** 40) }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('munmap' as const), a: actor, addr: arbAddr, len: arbLen }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('mprotect' as const), a: actor, addr: arbAddr, len: arbLen, prot }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('mremap' as const), a: actor, addr: arbAddr, old: arbLen, len: arbLen, flags: fc.constantFrom(...MREMAP_CHOICES), dest: arbAddr }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('madvise' as const), a: actor, addr: arbAddr, len: arbLen, advice: fc.constantFrom(...ADVICE_CHOICES) }) },
  { weight: 14, arbitrary: fc.record({ t: fc.constant('touch' as const), a: actor, addr: arbAddr, kind: touchKind, pages: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('fork' as const), a: actor, keep: fc.boolean(), touches: fc.array(fc.record({ addr: arbAddr, kind: touchKind }), { maxLength: 4 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('clone' as const), a: actor }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('spawn' as const), a: actor }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('exit' as const), a: actor }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('bopen' as const), a: actor, len: fc.oneof({ weight: 6, arbitrary: fc.record({ pages: fc.constantFrom(4, 8, 16, 32, 1025), delta: fc.constantFrom(0, 0, 1) }) }, { weight: 1, arbitrary: arbLen }), prot: fc.constantFrom(1, 1, 1, 3, 5, 0), shared: fc.boolean(), cm: fc.boolean() }) },
  { weight: 12, arbitrary: fc.record({ t: fc.constant('bsend' as const), a: actor, to: fc.nat(7), oneway: fc.boolean(), size: txSize, obj: fc.constantFrom('none' as const, 'self' as const, 'self' as const, 'handle' as const), bad: fc.oneof({ weight: 3, arbitrary: fc.constant<BadSend>('none') }, { weight: 1, arbitrary: fc.constantFrom<BadSend>(...BAD_SENDS) }), clear: fc.boolean() }) },
  { weight: 12, arbitrary: fc.record({ t: fc.constant('brecv' as const), a: actor, reply: fc.constantFrom(true, true, true, false), free: fc.constantFrom(true, true, true, false, false) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('breply' as const), a: actor, size: txSize }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('bfree' as const), a: actor, which: fc.constantFrom('held' as const, 'held' as const, 'held' as const, 'again' as const, 'unknown' as const, 'mid' as const, 'zero' as const), i: fc.nat(7) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('bcmd' as const), a: actor, kind: fc.constantFrom(...BAD_CMDS) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('vmsplice' as const), a: actor, addr: arbAddr, len: arbLen, nonblock: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('pread' as const), a: actor, len: fc.constantFrom(1, 100, 4096, 65536) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('shrink' as const), a: actor, nr: fc.constantFrom(...SHRINK_CHOICES) }) },
);

export interface ScenarioShape {
  /** Operations per scenario (the array is generated with exactly this length before shrinking). */
  ops: number;
  /** Every scenario's CPU count; absent or null: drawn per scenario (2 to 4). */
  cpus?: number | null;
}

/**
 * The operation sequence, with a shrinker made for fuzz failures. fast-check's own array shrinker
 * cuts the length by keeping the tail, then removes items one at a time — quadratic in runs, and
 * a fuzz failure depends on the operations before it, not after. This one offers, in order:
 *  1. prefixes (L/2, 3L/4, 7L/8, … L-1 long): the first that still fails is kept, so a handful of
 *     short runs cut everything after the failure;
 *  2. the sequence without one block of L/2, then L/4, … then 1 operations (delta debugging);
 *  3. each operation replaced by a simpler one (fast-check's shrinker for that operation), so
 *     addresses, lengths and flags move toward small, readable values.
 * fast-check restarts from the first candidate that fails, and records the candidates' indices
 * as the path a replay walks again.
 */
class OpSequenceArbitrary extends fc.Arbitrary<Op[]> {
  private readonly inner: fc.Arbitrary<Op[]>;

  constructor(readonly maxLength: number) {
    super();
    this.inner = fc.array(arbOp, { minLength: 1, maxLength, size: 'max' });
  }

  generate(mrng: fc.Random, biasFactor: number | undefined): fc.Value<Op[]> {
    return new fc.Value(this.inner.generate(mrng, biasFactor).value, undefined);
  }

  canShrinkWithoutContext(value: unknown): value is Op[] {
    return Array.isArray(value);
  }

  shrink(value: Op[], _context: unknown): fc.Stream<fc.Value<Op[]>> {
    return fc.stream(candidates(value)).map((v) => new fc.Value(v, undefined));
  }
}

function* candidates(ops: Op[]): IterableIterator<Op[]> {
  const n = ops.length;
  if (n <= 1) {
    if (n === 1) yield* simpler(ops, 0);
    return;
  }
  for (let k = 1; n >> k >= 1; k++) yield ops.slice(0, n - (n >> k));
  for (let size = n >> 1; size >= 1; size >>= 1) {
    for (let at = 0; at < n; at += size) {
      if (at + size >= n && at > 0) continue; // dropping the tail is a prefix, tried above
      yield [...ops.slice(0, at), ...ops.slice(at + size)];
    }
  }
  for (let i = 0; i < n; i++) yield* simpler(ops, i);
}

/** `ops` with operation i replaced by each of its first few simpler versions. */
function* simpler(ops: Op[], i: number): IterableIterator<Op[]> {
  if (!arbOp.canShrinkWithoutContext(ops[i])) return;
  let tried = 0;
  for (const s of arbOp.shrink(ops[i]!, undefined)) {
    if (++tried > 4) return;
    const next = ops.slice();
    next[i] = s.value;
    yield next;
  }
}

/** A whole fuzz case. The longest sequence is fixed by `shape`, so a seed and path replay exactly. */
export function arbScenario(shape: ScenarioShape): fc.Arbitrary<Scenario> {
  // The operations come first: they are shrunk before the machine shape.
  return fc
    .record({
      ops: new OpSequenceArbitrary(shape.ops),
      cpus: shape.cpus ? fc.constant(shape.cpus) : fc.constantFrom(2, 2, 3, 4),
      memoryMiB: fc.constantFrom(16, 24, 32),
      quantum: fc.constantFrom(500, 2000, 20000),
      // One number picks the six designs (3 bits each): it shrinks in a few steps, toward all 'eager'.
      designs: fc.nat(2 ** 18 - 1).map((mix) => Array.from({ length: 6 }, (_, i) => (mix >>> (3 * i)) & 7)),
      procs: fc.integer({ min: 2, max: 4 }),
    })
    .map(({ ops, cpus, memoryMiB, quantum, designs, procs }) => ({ cpus, memoryMiB, quantum, designs, procs, ops }));
}

// ---- printing -------------------------------------------------------------------------------

function hexOr(v: number): string {
  return Number.isSafeInteger(v) && v >= 0 ? `0x${v.toString(16)}` : String(v);
}

export function fmtAddr(a: Addr): string {
  switch (a.r) {
    case 'win':
      return `win+${a.page}p${a.off ? `+${a.off}` : ''}`;
    case 'bind':
      return `binder+${a.page}p${a.off ? `+${a.off}` : ''}`;
    case 'top':
      return `top-${a.page + 1}p${a.off ? `+${a.off}` : ''}`;
    case 'wild':
      return hexOr(a.v);
  }
}

export function fmtLen(l: Len): string {
  if ('wild' in l) return hexOr(l.wild);
  return `${l.pages}p${l.delta > 0 ? `+${l.delta}` : l.delta < 0 ? `${l.delta}` : ''}`;
}

/** One line per op, the way the fuzzer prints a shrunk sequence. */
export function fmtOp(op: Op): string {
  const who = `@${op.a}`;
  switch (op.t) {
    case 'mmap':
      return `${who} mmap(${fmtAddr(op.addr)}, ${fmtLen(op.len)}, prot=0x${op.prot.toString(16)}, flags=0x${op.flags.toString(16)}, fd=${op.fd}, pgoff=${hexOr(op.pgoff)})`;
    case 'munmap':
      return `${who} munmap(${fmtAddr(op.addr)}, ${fmtLen(op.len)})`;
    case 'mprotect':
      return `${who} mprotect(${fmtAddr(op.addr)}, ${fmtLen(op.len)}, 0x${op.prot.toString(16)})`;
    case 'mremap':
      return `${who} mremap(${fmtAddr(op.addr)}, ${fmtLen(op.old)}, ${fmtLen(op.len)}, flags=${op.flags}, ${fmtAddr(op.dest)})`;
    case 'madvise':
      return `${who} madvise(${fmtAddr(op.addr)}, ${fmtLen(op.len)}, ${op.advice})`;
    case 'touch':
      return `${who} ${op.kind} ${fmtAddr(op.addr)} x${op.pages}`;
    case 'fork':
      return `${who} fork(${op.keep ? 'keep' : 'short'}${op.touches.length ? `; child ${op.touches.map((t) => `${t.kind} ${fmtAddr(t.addr)}`).join(', ')}` : ''})`;
    case 'clone':
    case 'spawn':
    case 'exit':
      return `${who} ${op.t}`;
    case 'bopen':
      return `${who} binder open+mmap(${fmtLen(op.len)}, prot=${op.prot}, ${op.shared ? 'shared' : 'private'}${op.cm ? ', context manager' : ''})`;
    case 'bsend':
      return `${who} BC_TRANSACTION(to #${op.to}, ${op.oneway ? 'oneway, ' : ''}${op.size} bytes${op.obj !== 'none' ? `, object ${op.obj}` : ''}${op.bad !== 'none' ? `, bad ${op.bad}` : ''}${op.clear ? ', TF_CLEAR_BUF' : ''})`;
    case 'brecv':
      return `${who} read${op.reply ? ' +reply' : ''}${op.free ? ' +free' : ''}`;
    case 'breply':
      return `${who} BC_REPLY(${op.size} bytes)`;
    case 'bfree':
      return `${who} BC_FREE_BUFFER(${op.which} #${op.i})`;
    case 'bcmd':
      return `${who} binder ${op.kind}`;
    case 'vmsplice':
      return `${who} vmsplice(${fmtAddr(op.addr)}, ${fmtLen(op.len)}${op.nonblock ? ', SPLICE_F_NONBLOCK' : ''})`;
    case 'pread':
      return `${who} read(pipe, ${op.len})`;
    case 'shrink':
      return `${who} shrink(${op.nr})`;
  }
}

export function fmtScenario(s: Scenario): string {
  return [`cpus=${s.cpus} memory=${s.memoryMiB}MiB quantum=${s.quantum} procs=${s.procs} designs=${s.designs.map((d) => labelOf(FUZZ_DESIGNS[d]!)).join(',')}`, ...s.ops.map((op, i) => `  ${String(i).padStart(4)}: ${fmtOp(op)}`)].join('\n');
}

export function labelOf(d: DesignOptions): string {
  return d.design.startsWith('eager') ? `${d.design}/${d.identity ?? 'mapped'}` : d.design;
}
