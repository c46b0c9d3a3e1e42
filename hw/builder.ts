/**
 * hw/builder.ts — a small page-table builder for demonstrations, tests and conformance suites that
 * want to lay out paging structures by hand. It takes table frames from a bump allocator over a
 * physical range the caller reserves, and writes entries with the same PAE ordering the kernel
 * uses. It knows nothing of Linux: the mini-kernel has its own page-table code in kernel/.
 */

import type { Machine } from './machine.ts';
import { LEVEL_PDE, LEVEL_PDPTE, LEVEL_PTE, PTE64_A, PTE64_P, PTE64_RW, PTE64_US, encodeEntry, levelIndex, type EntryFields } from './pte.ts';
import { toVa, type LinearAddress } from './address.ts';

export class PageTableBuilder {
  private next: number;
  readonly root: number;
  readonly levels: number;

  /**
   * @param machine  the machine whose memory receives the tables
   * @param from     first physical address the builder may use for tables (4 KiB aligned)
   * @param to       end (exclusive) of that range
   * @param levels   4 or 5
   */
  constructor(
    private readonly machine: Machine,
    from: number,
    private readonly to: number,
    levels = 4,
  ) {
    if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to)) {
      throw new TypeError(`table range must be two integer physical addresses, got ${String(from)} and ${String(to)}`);
    }
    if (from % 4096 !== 0 || to % 4096 !== 0 || from >= to || to > machine.phys.size) {
      throw new RangeError(`table range 0x${from.toString(16)}..0x${to.toString(16)} must be 4 KiB aligned and inside installed memory`);
    }
    if (levels !== 4 && levels !== 5) throw new RangeError('levels must be 4 or 5');
    this.next = from;
    this.levels = levels;
    this.root = this.allocTable();
  }

  /** A zeroed 4 KiB table from the builder's range. */
  allocTable(): number {
    if (this.next + 4096 > this.to) throw new RangeError('page-table builder ran out of table frames');
    const pa = this.next;
    this.next += 4096;
    this.machine.phys.fillFrame(pa / 4096, 0);
    return pa;
  }

  /** Physical address of the entry for `va` at `level`, creating missing tables above it. */
  entryAddress(va: LinearAddress, level: number, nonLeaf: Partial<EntryFields> = {}): number {
    const v = BigInt.asUintN(64, typeof va === 'bigint' ? va : BigInt(va));
    toVa(va);
    let table = this.root;
    for (let l = this.levels; l > level; l--) {
      const ea = table + levelIndex(v, l) * 8;
      const e = this.machine.phys.read64(ea);
      if ((e & PTE64_P) === 0n) {
        const t = this.allocTable();
        this.machine.phys.write64(ea, encodeEntry(l, { address: t, P: true, RW: true, US: true, ...nonLeaf }));
        table = t;
      } else {
        table = Number(e & 0x000ffffffffff000n);
      }
    }
    return table + levelIndex(v, level) * 8;
  }

  /** Map one page of `size` bytes (4 KiB, 2 MiB or 1 GiB) at `va` to `pa` with the given leaf fields. */
  map(va: LinearAddress, pa: number, fields: Partial<EntryFields> = {}, size: 4096 | 2097152 | 1073741824 = 4096): number {
    const level = size === 4096 ? LEVEL_PTE : size === 2097152 ? LEVEL_PDE : LEVEL_PDPTE;
    const ea = this.entryAddress(va, level);
    this.machine.phys.write64(ea, encodeEntry(level, { P: true, RW: true, US: true, A: false, ...fields, address: pa, PS: level !== LEVEL_PTE }));
    return ea;
  }

  /** Write a raw entry value at `level` for `va`. */
  setEntry(va: LinearAddress, level: number, value: bigint): number {
    const ea = this.entryAddress(va, level);
    this.machine.phys.write64(ea, value);
    return ea;
  }
}

/** Flags of a user read-write present entry with A set, for quick tests. */
export const USER_RW_A = PTE64_P | PTE64_RW | PTE64_US | PTE64_A;
