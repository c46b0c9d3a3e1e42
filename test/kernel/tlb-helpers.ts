// Helpers for the TLB tests: where an mm lives in a CPU's ASID slots, what a CPU still caches
// for it (hw/inspect.ts), and the coherence rule of the tlb_gen protocol — a CPU whose ASID
// slot says it is up to date with an mm (ctxs[asid].tlb_gen == mm->context.tlb_gen) must not
// cache a translation for that mm that the page tables no longer allow.
import { staleEntries, tlbEntries, type CachedTranslation } from '../../hw/inspect.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';
import { TLB_NR_DYN_ASIDS } from '../../kernel/arch/x86/tlb.ts';

export const PAGE = 4096;

/** The dynamic ASID slot holding `mm` on `cpu`, or -1. */
export function asidOf(k: Kernel, cpu: number, mm: MmStruct): number {
  const st = k.tlb.cpuState[cpu]!;
  if (!k.options.pcid) return st.loaded_mm === mm ? 0 : -1;
  for (let a = 0; a < TLB_NR_DYN_ASIDS; a++) if (st.ctxs[a]!.ctx_id === mm.ctx_id) return a;
  return -1;
}

/** The PCID `mm` uses on `cpu` (kPCID = ASID + 1; 0 without PCIDs), or -1. */
export function pcidOf(k: Kernel, cpu: number, mm: MmStruct): number {
  const a = asidOf(k, cpu, mm);
  if (a < 0) return -1;
  return k.options.pcid ? a + 1 : 0;
}

/** Translations `cpu` caches for `mm` (under the PCID of its ASID slot) in [start, end). */
export function cached(k: Kernel, cpu: number, mm: MmStruct, start: number, end: number): CachedTranslation[] {
  const pcid = pcidOf(k, cpu, mm);
  if (pcid < 0) return [];
  return tlbEntries(k.machine.cpu(cpu)).filter((e) => e.pcid === pcid && !e.global && e.va >= BigInt(start) && e.va < BigInt(end));
}

/** The mm (or init_mm) with this ctx_id, if it still exists. */
function mmById(k: Kernel, ctxId: number): MmStruct | null {
  if (k.init_mm.ctx_id === ctxId) return k.init_mm;
  for (const m of k.mms) if (m.ctx_id === ctxId) return m;
  return null;
}

/**
 * Violations of the tlb_gen rule on every CPU, at a quiescent point (no change of page tables in
 * progress): for each ASID slot that claims to be current for a live mm, or that a CPU is running
 * right now, cached translations (or paging-structure entries) that give more than the page tables
 * do now. Fewer rights are harmless (a spurious fault), so they are not violations.
 */
export function tlbIncoherence(k: Kernel): string[] {
  const out: string[] = [];
  for (let c = 0; c < k.machine.cpuCount; c++) {
    const st = k.tlb.cpuState[c]!;
    const roots = new Map<number, MmStruct>();
    for (let a = 0; a < TLB_NR_DYN_ASIDS; a++) {
      const ctx = st.ctxs[a]!;
      const mm = mmById(k, ctx.ctx_id);
      if (!mm || mm.pgd === 0 || mm === k.init_mm) continue;
      if (!k.options.pcid && (a !== 0 || st.loaded_mm !== mm)) continue;
      // A slot behind the mm's generation will be flushed before it is used again — unless the
      // CPU is running that mm right now (loaded, not lazy): then nothing will flush it.
      const running = st.loaded_mm === mm && !st.is_lazy && st.loaded_mm_asid === a;
      if (ctx.tlb_gen < mm.tlb_gen && !running) continue;
      roots.set(k.options.pcid ? a + 1 : 0, mm);
    }
    if (roots.size === 0) continue;
    const cpu = k.machine.cpu(c);
    for (const s of staleEntries(cpu, (pcid) => BigInt(roots.get(pcid)?.pgd ?? cpu.pcidRoot(pcid)))) {
      if (!roots.has(s.entry.pcid)) continue;
      if (s.reason === 'fewer-rights') continue;
      out.push(`CPU ${c} PCID ${s.entry.pcid} (mm ${roots.get(s.entry.pcid)!.ctx_id}) ${s.entry.array} ${s.entry.va.toString(16)}: ${s.reason}`);
    }
  }
  return out;
}

/**
 * mm_count bookkeeping: one reference for all users while there are any, plus one for each CPU
 * that has the mm loaded (lazily or not). Returns the mms whose count differs.
 */
export function mmCountMismatches(k: Kernel): string[] {
  const out: string[] = [];
  for (const mm of k.mms) {
    if (mm === k.init_mm) continue;
    const loaded = k.tlb.cpuState.filter((s) => s.loaded_mm === mm).length;
    const want = (mm.mm_users > 0 ? 1 : 0) + loaded;
    if (mm.mm_count !== want) out.push(`mm ${mm.ctx_id}: mm_count ${mm.mm_count}, expected ${want} (users ${mm.mm_users}, loaded on ${loaded} CPUs)`);
  }
  return out;
}
