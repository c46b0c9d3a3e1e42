/**
 * The fast walker (hw/walk.ts, through cpu.access with empty TLBs) against the reference
 * translator written from the SDM (hw/walk-reference.ts), over exhaustive tables:
 *
 *  A. every leaf combination (P, R/W, U/S, A, D, XD, three reserved-bit choices) for 4 KiB,
 *     2 MiB and 1 GiB leaves, under every combination of access kind, CPL, implicit access,
 *     CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP and RFLAGS.AC; then the same leaves under CR4.PKE with
 *     PKRU access- and write-disable for the leaf's key;
 *  B. every combination of one non-leaf entry (P, R/W, U/S, A, XD, three reserved choices) with
 *     every leaf combination, for each position on each path, under kind × CPL × WP × NXE;
 *  C. 5-level paging and a CPU without 1 GiB pages.
 *
 * With paging-structure caches off, every walk that succeeds with A and D already set goes
 * through the straight-line fast walker; everything else, and every walk with the caches on,
 * through the general walker. Part A runs both ways.
 *
 * Each case compares the result, vector, error code, CR2 and every entry's bits afterwards.
 */

import { describe, expect, it } from 'vitest';
import { KINDS, PERMISSIVE, VA, VA57, WalkHarness, booleanProduct, type Controls, type EntryFlags } from './walk-cases.ts';

const SIZES = [4096, 2 << 20, 1 << 30] as const;
const SIZE_NAME: Record<number, string> = { 4096: '4 KiB', [2 << 20]: '2 MiB', [1 << 30]: '1 GiB' };
const pathLength = (size: number) => (size === 4096 ? 4 : size === 2 << 20 ? 3 : 2);

function* leafFlags(withRsvd: boolean): Generator<EntryFlags> {
  for (const b of booleanProduct(['P', 'RW', 'US', 'A', 'D', 'XD'] as const)) {
    for (const rsvd of withRsvd ? ([0, 1, 2] as const) : ([0] as const)) yield { ...b, rsvd };
  }
}

function* controlsA(): Generator<Controls> {
  for (const kind of KINDS) {
    for (const b of booleanProduct(['user', 'implicit', 'wp', 'nxe', 'smep', 'smap', 'ac'] as const)) {
      yield { kind, cpl: b.user ? 3 : 0, implicit: b.implicit, wp: b.wp, nxe: b.nxe, smep: b.smep, smap: b.smap, ac: b.ac, pke: false, pkru: 0 };
    }
  }
}

function check(h: WalkHarness, va: bigint, size: number, flags: EntryFlags[], c: Controls, la57 = false): void {
  const addrs = h.writePath(va, size, flags, la57);
  const d = h.compare(va, addrs, c, la57);
  if (d !== null) {
    throw new Error(`${SIZE_NAME[size]} path ${JSON.stringify(flags)} controls ${JSON.stringify(c)}: ${d}`);
  }
}

describe('fast walker against the SDM reference', () => {
  for (const size of SIZES) {
    it.each([true, false])(`A: every ${SIZE_NAME[size]} leaf under every control combination (paging-structure caches %s)`, (psc) => {
      const h = new WalkHarness({ psc });
      let cases = 0;
      const upper = Array.from({ length: pathLength(size) - 1 }, () => PERMISSIVE);
      for (const leaf of leafFlags(true)) {
        for (const c of controlsA()) {
          check(h, VA, size, [...upper, leaf], c);
          cases++;
        }
      }
      expect(cases).toBe(64 * 3 * 3 * 128);
    });

    it(`A: every ${SIZE_NAME[size]} leaf under protection keys`, () => {
      const h = new WalkHarness();
      let cases = 0;
      const upper = Array.from({ length: pathLength(size) - 1 }, () => PERMISSIVE);
      for (const leaf of leafFlags(false)) {
        for (const pk of [0, 5]) {
          for (const pkruBits of [0, 1, 2, 3]) {
            // AD/WD for the leaf's key, plus a noise bit on another key that must not matter
            const pkru = (pkruBits << (2 * pk)) | (1 << (2 * ((pk + 3) % 16)));
            for (const kind of KINDS) {
              for (const b of booleanProduct(['user', 'wp', 'pke'] as const)) {
                const c: Controls = { kind, cpl: b.user ? 3 : 0, implicit: false, wp: b.wp, nxe: true, smep: false, smap: false, ac: false, pke: b.pke, pkru };
                check(h, VA, size, [...upper, { ...leaf, pk }], c);
                cases++;
              }
            }
          }
        }
      }
      expect(cases).toBe(64 * 2 * 4 * 3 * 8);
    });

    it(`B: every non-leaf entry combination with every ${SIZE_NAME[size]} leaf`, () => {
      // Without paging-structure caches every successful walk with A set takes the fast walker.
      const h = new WalkHarness({ psc: false });
      let cases = 0;
      const len = pathLength(size);
      for (let pos = 0; pos < len - 1; pos++) {
        for (const nb of booleanProduct(['P', 'RW', 'US', 'A', 'XD'] as const)) {
          for (const rsvd of [0, 1, 2] as const) {
            const nonLeaf: EntryFlags = { ...nb, D: false, rsvd };
            for (const leaf of leafFlags(false)) {
              for (const kind of KINDS) {
                for (const b of booleanProduct(['user', 'wp', 'nxe'] as const)) {
                  const c: Controls = { kind, cpl: b.user ? 3 : 0, implicit: false, wp: b.wp, nxe: b.nxe, smep: false, smap: false, ac: false, pke: false, pkru: 0 };
                  const path = Array.from({ length: len }, (_v, i) => (i === pos ? nonLeaf : i === len - 1 ? leaf : PERMISSIVE));
                  check(h, VA, size, path, c);
                  cases++;
                }
              }
            }
          }
        }
      }
      expect(cases).toBe((len - 1) * 32 * 3 * 64 * 3 * 8);
    });
  }

  it('C: 5-level paging (CR4.LA57) paths', () => {
    const h = new WalkHarness({ la57: true });
    let cases = 0;
    for (const size of SIZES) {
      const len = pathLength(size) + 1;
      for (let pos = 0; pos < len; pos++) {
        for (const nb of booleanProduct(['P', 'RW', 'US', 'A'] as const)) {
          for (const rsvd of [0, 1, 2] as const) {
            for (const kind of KINDS) {
              for (const user of [false, true]) {
                const e: EntryFlags = { ...nb, D: false, XD: false, rsvd };
                const path = Array.from({ length: len }, (_v, i) => (i === pos ? e : PERMISSIVE));
                check(h, VA57, size, path, { kind, cpl: user ? 3 : 0, implicit: false, wp: true, nxe: true, smep: false, smap: false, ac: false, pke: false, pkru: 0 }, true);
                cases++;
              }
            }
          }
        }
      }
    }
    expect(cases).toBeGreaterThan(1000);
  });

  it('C: without 1 GiB page support a PS=1 PDPTE is a reserved-bit fault', () => {
    const h = new WalkHarness({ gbPages: false });
    const c: Controls = { kind: 'read', cpl: 0, implicit: false, wp: true, nxe: true, smep: false, smap: false, ac: false, pke: false, pkru: 0 };
    const addrs = h.writePath(VA, 1 << 30, [PERMISSIVE, PERMISSIVE]);
    expect(h.compare(VA, addrs, c)).toBeNull();
    h.load(c);
    h.cpu.flushEverything();
    const r = h.cpu.access(VA, 'read');
    expect(r).toMatchObject({ ok: false, vector: 14, errorCode: 0x9 });
  });

  it('C: MAXPHYADDR changes which address bits are reserved', () => {
    for (const maxPhyAddr of [36, 39, 52]) {
      const h = new WalkHarness({ maxPhyAddr });
      for (const rsvd of [0, 1, 2] as const) {
        for (const size of SIZES) {
          const len = pathLength(size);
          for (let pos = 0; pos < len; pos++) {
            const path = Array.from({ length: len }, (_v, i) => (i === pos ? { ...PERMISSIVE, rsvd } : PERMISSIVE));
            check(h, VA, size, path, { kind: 'write', cpl: 3, implicit: false, wp: true, nxe: true, smep: false, smap: false, ac: false, pke: false, pkru: 0 });
          }
        }
      }
    }
  });
});
