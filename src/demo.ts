/**
 * src/demo.ts — `mmulab demo`: a small tour of the hardware layer. It builds a machine, lays out
 * 4-level page tables by hand, performs accesses and prints what the MMU did: the translation
 * or the fault (vector, decoded error code, CR2), the TLB level that answered, and the A/D bits
 * of the entries afterwards. It then changes a PTE without invalidating, shows the stale
 * translation still being used, and shows INVLPG removing it. --json prints the same steps
 * (docs/schemas/demo.schema.json).
 */

import { Machine, PageTableBuilder, PF_ID, PF_P, PF_PK, PF_RSVD, PF_U, PF_W, decodeEntry, LEVEL_PTE, hex64 } from '../hw/index.ts';
import type { AccessKind } from '../hw/index.ts';
import type { HwCostModel } from '../hw/cost.ts';

export interface DemoOptions {
  json: boolean;
  /** Hardware costs and clock of the machine (--cost-model); default the built-in ones. */
  cost?: Partial<HwCostModel>;
  clockGhz?: number;
}

interface Row {
  step: string;
  cpl: number;
  kind: AccessKind;
  va: string;
  result: string;
  answeredBy: string;
  pteAfter: string;
}

export function errorCodeText(e: number): string {
  const parts = [e & PF_P ? 'protection' : 'not-present', e & PF_ID ? 'instruction fetch' : e & PF_W ? 'write' : 'read', e & PF_U ? 'user' : 'supervisor'];
  if (e & PF_RSVD) parts.push('reserved bit');
  if (e & PF_PK) parts.push('protection key');
  return parts.join(', ');
}

export function runDemo(opts: DemoOptions): { rows: Row[]; text: string } {
  const m = new Machine({ memoryBytes: 16 << 20, cpus: 1, ...(opts.cost ? { cost: opts.cost } : {}), ...(opts.clockGhz !== undefined ? { clockGhz: opts.clockGhz } : {}) });
  const cpu = m.cpu(0);
  const tables = new PageTableBuilder(m, 0x100000, 0x200000);
  cpu.writeCr3(BigInt(tables.root));
  const DATA = 0x7f0000001000;
  const CODE = 0x7f0000002000;
  const KERNEL = -0x800000000000 + 0x1000; // 0xffff800000001000
  const pteData = tables.map(DATA, 0x300000, { RW: true, US: true });
  tables.map(CODE, 0x301000, { RW: false, US: true, XD: false });
  const pteKernel = tables.map(KERNEL, 0x302000, { RW: true, US: false, XD: true });
  const rows: Row[] = [];
  const step = (label: string, cpl: 0 | 3, kind: AccessKind, va: number, pte: number | null): void => {
    cpu.setCpl(cpl);
    const before = cpu.counters();
    const r = cpu.access(va, kind);
    const after = cpu.counters();
    const by = after.walks! > before.walks! ? 'page walk' : after.stlbHits! > before.stlbHits! ? 'second-level TLB' : after.l1Hits! > before.l1Hits! ? 'L1 TLB' : '—';
    const result = r.ok ? `pa ${hex64(r.pa)}` : r.vector === 14 ? `#PF error 0x${r.errorCode.toString(16)} (${errorCodeText(r.errorCode)}), CR2 ${hex64(r.cr2)}` : `vector ${r.vector}`;
    let pteAfter = '';
    if (pte !== null) {
      const d = decodeEntry(m.phys.read64(pte), LEVEL_PTE);
      pteAfter = d.P ? `A=${+d.A} D=${+d.D}` : 'not present';
    }
    rows.push({ step: label, cpl, kind, va: hex64(va), result, answeredBy: r.ok ? by : 'fault', pteAfter });
  };
  step('first read of a user page', 3, 'read', DATA + 0x10, pteData);
  step('second read: the TLB answers', 3, 'read', DATA + 0x20, pteData);
  step('first write: D was 0 in the TLB, re-walk sets D', 3, 'write', DATA + 0x20, pteData);
  step('execute from a read-only user page', 3, 'fetch', CODE, null);
  step('write to it from user mode', 3, 'write', CODE, null);
  step('user read of a supervisor page', 3, 'read', KERNEL, pteKernel);
  step('kernel read of the same page', 0, 'read', KERNEL, pteKernel);
  step('kernel fetch from an execute-disable page', 0, 'fetch', KERNEL, pteKernel);
  step('read of an unmapped address', 3, 'read', 0x7f0000009000, null);
  // A stale translation: change the PTE behind the TLB's back.
  m.phys.write64(pteData, 0n);
  step('PTE cleared, no INVLPG: the stale TLB entry still answers', 3, 'read', DATA, pteData);
  cpu.invlpg(DATA);
  step('after INVLPG the page faults', 3, 'read', DATA, pteData);
  const costs = { clockGhz: m.config.cost.clockGhz, hw: m.config.cost.hw };
  const text = opts.json ? JSON.stringify({ schema: 'mmulab.demo/1', rows, counters: cpu.counters(), costs }, null, 2) : renderRows(rows, cpu.counters());
  return { rows, text };
}

function renderRows(rows: Row[], counters: Record<string, number>): string {
  const out: string[] = ['mmulab demo: one CPU, 4-level paging, hand-built page tables', ''];
  rows.forEach((r, i) => {
    out.push(`${String(i + 1).padStart(2)}. ${r.step}`);
    out.push(`    CPL ${r.cpl} ${r.kind.padEnd(5)} ${r.va} -> ${r.result}`);
    out.push(`    answered by: ${r.answeredBy}${r.pteAfter ? `; PTE now ${r.pteAfter}` : ''}`);
  });
  out.push('');
  const keys = ['cycles', 'accesses', 'l1Hits', 'l1Misses', 'walks', 'walkMemRefs', 'adUpdates', 'dirtyRewalks', 'pageFaults', 'invlpg'];
  out.push('counters: ' + keys.map((k) => `${k}=${counters[k]}`).join(' '));
  return out.join('\n');
}
