/**
 * kernel/arch/x86/mm/dump_pagetables.ts — the page-table dump of one address space in the
 * format of debugfs page_tables/current_user (arch/x86/mm/dump_pagetables.c driven by the
 * generic walker of mm/ptdump.c), and the W+X check built on the same walk.
 *
 * The walk is ptdump_walk_pgd over the ranges x86-64 gives it, [0, half the address space) then
 * [GUARD_HOLE_END_ADDR, ~0): every leaf and every hole is handed to note_page with its level
 * (0 pgd, 1 p4d, 2 pud, 3 pmd, 4 pte). A missing entry is a hole at the level of the table that
 * holds it — with 4-level paging the p4d is folded into the pgd, so a missing PML4 entry is a
 * "pgd" hole (real_depth) — and inside a page table every entry is noted, present or not.
 * note_page keeps one line open and prints it when the next entry differs in its flags (the
 * entry without its address bits 12-51, so A, D and the software bits count although they are
 * not printed), in its effective protection (USER and RW ANDed down the walk, NX ORed), in its
 * level, or when an address marker is crossed. A line is
 *
 *   0x%016lx-0x%016lx   %9lu%c <30 columns of flags><level name>
 *
 * with the size divided by 1024 while it stays a multiple of 1024 (units B K M G T P E) and the
 * flag columns USR/RW-ro/PWT/PCD/PSE/PAT/GLB/NX-x, or 30 spaces for a non-present range.
 * Two quirks of Linux are kept: PSE prints for any pgd/p4d/pud/pmd entry with bit 7 set, and PAT
 * never prints for large pages, because bit 12 (PAT_LARGE) is inside the address mask that
 * note_page strips. The last range of user space ends at the first address of the second walk
 * range (e.g. 0xffff880000000000 with 4-level paging), as in Linux, where the next noted entry
 * closes it.
 *
 * Deviations: mmulab has no page-table isolation, so "current_user" is the mm's own pgd; its
 * kernel half is empty (kernel code uses the direct map, see kernel/arch/x86/pgtable.ts), so the
 * dump ends with the "---[ Kernel Space ]---" marker instead of walking a kernel half that does
 * not exist. mmulab maps PROT_NONE pages as present entries without the user bit (see
 * kernel/mm/mprotect.ts), so they print as "    ro ... NX" ranges where Linux prints a
 * non-present (PROTNONE) range of 30 spaces.
 */

import type { Kernel } from '../../../kernel.ts';
import type { MmStruct } from '../../../mm/mm_types.ts';
import { ENOENT, SyscallError } from '../../../errno.ts';

/** An address space, or the pid of a task whose address space is meant. */
export type PtdumpTarget = MmStruct | number;

/** The mm of `target`; null for a task without one; ENOENT for an unknown pid. */
function targetMm(k: Kernel, target: PtdumpTarget): MmStruct | null {
  if (typeof target !== 'number') return target;
  const t = Number.isSafeInteger(target) ? k.tasks.get(target) : undefined;
  if (t) return t.mm;
  if (Number.isSafeInteger(target) && k.groups.has(target)) return null;
  throw new SyscallError('open', ENOENT);
}

// Entry bits as 64-bit values (arch/x86/include/asm/pgtable_types.h).
const _PAGE_PRESENT = 1n << 0n;
const _PAGE_RW = 1n << 1n;
const _PAGE_USER = 1n << 2n;
const _PAGE_PWT = 1n << 3n;
const _PAGE_PCD = 1n << 4n;
const _PAGE_PSE = 1n << 7n;
const _PAGE_PAT = 1n << 7n;
const _PAGE_GLOBAL = 1n << 8n;
const _PAGE_PAT_LARGE = 1n << 12n;
const _PAGE_NX = 1n << 63n;
/** PTE_FLAGS_MASK = ~PTE_PFN_MASK: everything but the address bits 12-51. */
const PTE_FLAGS_MASK = ~(((1n << 52n) - 1n) & ~0xfffn) & ((1n << 64n) - 1n);
const ULONG = 1n << 64n;
const PAGE_SIZE = 4096n;

const LEVEL_NAME = ['pgd', 'p4d', 'pud', 'pmd', 'pte'] as const;

interface AddrMarker {
  start_address: bigint;
  name: string;
}

/** address_markers, as far as mmulab's address spaces reach. */
const ADDRESS_MARKERS: AddrMarker[] = [
  { start_address: 0n, name: 'User Space' },
  { start_address: 1n << 63n, name: 'Kernel Space' },
  { start_address: ULONG, name: '' },
];

/** struct pg_state. */
interface PgState {
  level: number;
  current_prot: bigint;
  effective_prot: bigint;
  prot_levels: bigint[];
  start_address: bigint;
  marker: number;
  check_wx: boolean;
  wx_pages: number;
  out: string[];
}

/** printk_prot: the 30 flag columns (or 30 spaces) and the level name. */
function printk_prot(pr: bigint, level: number): string {
  let s: string;
  if (!(pr & _PAGE_PRESENT)) {
    s = ' '.repeat(30);
  } else {
    s = pr & _PAGE_USER ? 'USR ' : '    ';
    s += pr & _PAGE_RW ? 'RW ' : 'ro ';
    s += pr & _PAGE_PWT ? 'PWT ' : '    ';
    s += pr & _PAGE_PCD ? 'PCD ' : '    ';
    // Bit 7 is PSE above the PTE level and PAT in a PTE.
    s += level <= 3 && pr & _PAGE_PSE ? 'PSE ' : '    ';
    s += (level === 4 && pr & _PAGE_PAT) || ((level === 3 || level === 2) && pr & _PAGE_PAT_LARGE) ? 'PAT ' : '    ';
    s += pr & _PAGE_GLOBAL ? 'GLB ' : '    ';
    s += pr & _PAGE_NX ? 'NX ' : 'x  ';
  }
  return s + LEVEL_NAME[level] + '\n';
}

/** effective_prot: record the protection in force at `level` for the levels below it. */
function effective_prot(st: PgState, level: number, val: bigint): void {
  const prot = val & PTE_FLAGS_MASK;
  let effective: bigint;
  if (level > 0) {
    const higher = st.prot_levels[level - 1]!;
    effective = (higher & prot & (_PAGE_USER | _PAGE_RW)) | ((higher | prot) & _PAGE_NX);
  } else effective = prot;
  st.prot_levels[level] = effective;
}

/** note_page: extend the open range, or print it and open a new one. */
function note_page(st: PgState, addr: bigint, level: number, val: bigint): void {
  const new_prot = val & PTE_FLAGS_MASK;
  const new_eff = val ? st.prot_levels[level]! : 0n;
  if (st.level === -1) {
    st.current_prot = new_prot;
    st.effective_prot = new_eff;
    st.level = level;
    st.marker = 0;
    st.out.push(`---[ ${ADDRESS_MARKERS[0]!.name} ]---\n`);
    return;
  }
  const nextMarker = ADDRESS_MARKERS[st.marker + 1]!.start_address;
  if (new_prot === st.current_prot && new_eff === st.effective_prot && level === st.level && addr < nextMarker) return;
  const delta0 = (addr - st.start_address + ULONG) % ULONG;
  if (st.check_wx && st.effective_prot & _PAGE_RW && !(st.effective_prot & _PAGE_NX)) st.wx_pages += Number(delta0 / PAGE_SIZE);
  let delta = delta0;
  const units = 'BKMGTPE';
  let unit = 0;
  while ((delta & 1023n) === 0n && unit < units.length - 1) {
    delta >>= 10n;
    unit++;
  }
  const hex16 = (a: bigint): string => a.toString(16).padStart(16, '0');
  st.out.push(`0x${hex16(st.start_address)}-0x${hex16(addr)}   ${delta.toString().padStart(9, ' ')}${units[unit]} ${printk_prot(st.current_prot, st.level)}`);
  if (addr >= nextMarker) {
    st.marker++;
    st.out.push(`---[ ${ADDRESS_MARKERS[st.marker]!.name} ]---\n`);
  }
  st.start_address = addr;
  st.current_prot = new_prot;
  st.effective_prot = new_eff;
  st.level = level;
}

/** The 64-bit entry at physical address `e`. */
function entryAt(k: Kernel, e: number): bigint {
  return (BigInt(k.pt.hi(e) >>> 0) << 32n) | BigInt(k.pt.lo(e) >>> 0);
}

/**
 * walk_pgd_range and below over one table (hardware level `hw`: 5 PML5 … 1 PT) for [start, end),
 * with the ptdump_ops callbacks inlined: present table entries record their effective
 * protection and are descended into; leaves and holes are noted.
 */
function walkTable(k: Kernel, st: PgState, tablePa: number, hw: number, levels: number, base: bigint, start: bigint, end: bigint): void {
  const shift = BigInt(12 + 9 * (hw - 1));
  const span = 1n << shift;
  // ptdump levels: 4-level paging folds the p4d into the pgd, so its PML4 is the pgd (0).
  const depth = hw === levels ? 0 : 5 - hw;
  const first = Number((start - base) >> shift);
  const last = Number((end - 1n - base) >> shift);
  for (let i = first; i <= last; i++) {
    const addr = base + BigInt(i) * span;
    const val = entryAt(k, tablePa + i * 8);
    if (hw === 1) {
      effective_prot(st, 4, val);
      note_page(st, addr, 4, val);
      continue;
    }
    if (val === 0n) {
      note_page(st, addr, depth, 0n);
      continue;
    }
    if (hw >= 4) {
      // pgd/p4d: a non-present entry is "bad" and cleared by the walker: a hole. Never a leaf.
      if (!(val & _PAGE_PRESENT)) {
        note_page(st, addr, depth, 0n);
        continue;
      }
      effective_prot(st, depth, val);
      if (hw === levels && levels === 4) effective_prot(st, 1, val); // ptdump_p4d_entry on the folded p4d
    } else {
      effective_prot(st, depth, val);
      const leaf = hw === 2 ? (val & _PAGE_PSE) !== 0n : (val & (_PAGE_PSE | _PAGE_PRESENT)) === (_PAGE_PSE | _PAGE_PRESENT);
      if (leaf) {
        note_page(st, addr, depth, val);
        continue;
      }
      if (!(val & _PAGE_PRESENT)) continue;
    }
    const next = Number(val & ((1n << 52n) - 1n) & ~0xfffn);
    walkTable(k, st, next, hw - 1, levels, addr, addr, addr + span);
  }
}

/** The walk ranges of ptdump_walk_pgd_level_core on x86-64. */
function ptdumpRanges(levels: number): { userEnd: bigint; kernelStart: bigint } {
  const pgdirShift = levels === 5 ? 48n : 39n;
  // GUARD_HOLE_END_ADDR = GUARD_HOLE_BASE_ADDR (pgd entry -256) + 16 pgd entries.
  const guardBase = (ULONG - (256n << pgdirShift)) % ULONG;
  return { userEnd: (512n << pgdirShift) / 2n, kernelStart: guardBase + (16n << pgdirShift) };
}

function walk(k: Kernel, mm: MmStruct, checkWx: boolean): PgState {
  const st: PgState = { level: -1, current_prot: 0n, effective_prot: 0n, prot_levels: [0n, 0n, 0n, 0n, 0n], start_address: 0n, marker: 0, check_wx: checkWx, wx_pages: 0, out: [] };
  const levels = k.pt.levels;
  const { userEnd, kernelStart } = ptdumpRanges(levels);
  walkTable(k, st, mm.pgd, levels, levels, 0n, 0n, userEnd);
  // The second range starts with the first kernel pgd entry, empty in mmulab: noting it closes
  // the last user-space range and crosses into Kernel Space, where mmulab's dump stops.
  note_page(st, kernelStart, 0, 0n);
  return st;
}

/**
 * The debugfs page_tables/current_user file for the address space of `target` (an mm or a
 * pid): "---[ User Space ]---", one line per run of equal entries, and the Kernel Space marker.
 * Empty for a task without an address space.
 */
export function ptdump_walk_pgd_level_debugfs(k: Kernel, target: PtdumpTarget): string {
  const mm = targetMm(k, target);
  if (!mm || !mm.pgd) return '';
  return walk(k, mm, false).out.join('');
}

/**
 * ptdump_walk_user_pgd_level_checkwx: count the user pages that are writable and executable
 * (by effective protection) and the line Linux logs for the result.
 */
export function ptdump_check_wx(k: Kernel, target: PtdumpTarget): { wx_pages: number; message: string } {
  const mm = targetMm(k, target);
  if (!mm || !mm.pgd) return { wx_pages: 0, message: 'x86/mm: Checked W+X mappings: passed, no W+X pages found.' };
  const st = walk(k, mm, true);
  const message = st.wx_pages ? `x86/mm: Checked W+X mappings: FAILED, ${st.wx_pages} W+X pages found.` : 'x86/mm: Checked W+X mappings: passed, no W+X pages found.';
  return { wx_pages: st.wx_pages, message };
}
