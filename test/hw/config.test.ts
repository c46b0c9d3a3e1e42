/**
 * hw/config.ts — machine options: the defaults (Skylake-SP TLB geometry, the paging-structure-cache
 * defaults, the cost model), and resolveConfig rejecting each bad option with a ConfigError (or a
 * CostModelError for cost fields) whose message names the option. `new Machine` rejects the same
 * options before allocating anything.
 */

import { describe, expect, it } from 'vitest';
import { ConfigError, CostModelError, DEFAULT_HW_COSTS, DEFAULT_PSC, MAX_CPUS, MAX_MEMORY, MIN_MEMORY, Machine, SKYLAKE_SP_TLB, type MachineOptions } from '../../hw/index.ts';
import { resolveConfig } from '../../hw/config.ts';

const MB = 1 << 20;

describe('defaults', () => {
  it('a machine needs only memoryBytes; everything else has a documented default', () => {
    const c = resolveConfig({ memoryBytes: MB });
    expect(c).toEqual({
      memoryBytes: MB,
      cpus: 1,
      maxPhyAddr: 46,
      la57: false,
      pku: true,
      gbPages: true,
      pcid: true,
      invpcid: true,
      tlb: { ...SKYLAKE_SP_TLB },
      psc: { ...DEFAULT_PSC },
      cost: { clockGhz: 3, hw: { ...DEFAULT_HW_COSTS } },
      seed: 1,
    });
  });

  it('the Skylake-SP geometry of the optimization manual (Table 2-15) and the PSC defaults', () => {
    expect(SKYLAKE_SP_TLB).toEqual({
      unified: false,
      l1d4k: { sets: 16, ways: 4 }, // 64 entries, 4-way
      l1d2m: { sets: 8, ways: 4 }, // 32 entries, 4-way
      l1d1g: { sets: 1, ways: 4 }, // 4 entries
      l1i4k: { sets: 16, ways: 8 }, // 128 entries, 8-way
      l1i2m: { sets: 1, ways: 8 }, // 8 entries
      l1i1g: { sets: 0, ways: 0 }, // none
      stlb: { sets: 128, ways: 12 }, // 1,536 entries, 12-way
      stlb1g: { sets: 4, ways: 4 }, // 16 entries, 4-way
      replacement: 'lru',
    });
    expect(DEFAULT_PSC).toEqual({ enabled: true, pml5e: { sets: 1, ways: 2 }, pml4e: { sets: 1, ways: 2 }, pdpte: { sets: 1, ways: 4 }, pde: { sets: 8, ways: 4 } });
    expect(Object.isFrozen(SKYLAKE_SP_TLB)).toBe(true);
    expect([MIN_MEMORY, MAX_MEMORY, MAX_CPUS]).toEqual([MB, 4 * 1024 ** 3, 256]);
  });

  it('options are resolved, copied and validated: partial geometry, bigint memory, seed as unsigned', () => {
    const tlb = { l1d4k: { sets: 4 }, replacement: 'fifo' as const, unified: true };
    const c = resolveConfig({ memoryBytes: 2n * BigInt(MB), cpus: 256, maxPhyAddr: 52, la57: true, tlb: tlb as MachineOptions['tlb'], psc: { enabled: false, pde: { sets: 2, ways: 2 } }, clockGhz: 2.5, cost: { invlpg: 0 }, seed: -1 });
    expect(c.memoryBytes).toBe(2 * MB);
    expect(c.tlb.l1d4k).toEqual({ sets: 4, ways: 4 });
    expect(c.tlb.unified).toBe(true);
    expect(c.tlb.replacement).toBe('fifo');
    expect(c.psc).toMatchObject({ enabled: false, pde: { sets: 2, ways: 2 }, pml4e: { sets: 1, ways: 2 } });
    expect(c.cost).toEqual({ clockGhz: 2.5, hw: { ...DEFAULT_HW_COSTS, invlpg: 0 } });
    expect(c.seed).toBe(0xffffffff);
    expect(c.tlb.l1d4k).not.toBe(SKYLAKE_SP_TLB.l1d4k);
    expect(resolveConfig({ memoryBytes: MAX_MEMORY }).memoryBytes).toBe(MAX_MEMORY);
    expect(resolveConfig({ memoryBytes: MB, tlb: { l1d4k: { sets: 0, ways: 0 } } }).tlb.l1d4k).toEqual({ sets: 0, ways: 0 });
  });
});

const bad = (o: unknown) => o as MachineOptions;

describe('every bad option is rejected with a message naming it', () => {
  it.each([
    ['options not an object', bad(null), /machine options must be an object/],
    ['an unknown option', bad({ memoryBytes: MB, cpu: 2 }), /unknown machine option "cpu"/],
    ['memoryBytes missing', bad({}), /memoryBytes must be an integer from 1 MiB/],
    ['memoryBytes below 1 MiB', { memoryBytes: MB - 4096 }, /memoryBytes must be an integer from 1 MiB \(1048576\) to 4 GiB \(4294967296\), got 1044480/],
    ['memoryBytes above 4 GiB', { memoryBytes: MAX_MEMORY + 4096 }, /memoryBytes .* got 4294971392/],
    ['memoryBytes not whole frames', { memoryBytes: MB + 1 }, /memoryBytes must be a multiple of 4096 \(whole frames\), got 1048577/],
    ['memoryBytes a fraction', { memoryBytes: MB + 0.5 }, /memoryBytes must be an integer/],
    ['memoryBytes a string', bad({ memoryBytes: '1048576' }), /memoryBytes .* got 1048576/],
    ['memoryBytes a bigint above 4 GiB', { memoryBytes: 1n << 33n }, /memoryBytes must be from 1 MiB to 4 GiB, got 8589934592/],
    ['memoryBytes a negative bigint', { memoryBytes: -1n }, /memoryBytes must be from 1 MiB to 4 GiB, got -1/],
    ['memoryBytes a small bigint', { memoryBytes: 4096n }, /memoryBytes must be an integer from 1 MiB/],
    ['cpus 0', { memoryBytes: MB, cpus: 0 }, /cpus must be an integer from 1 to 256, got 0/],
    ['cpus 257', { memoryBytes: MB, cpus: 257 }, /cpus must be an integer from 1 to 256, got 257/],
    ['cpus 1.5', { memoryBytes: MB, cpus: 1.5 }, /cpus .* got 1.5/],
    ['maxPhyAddr 35', { memoryBytes: MB, maxPhyAddr: 35 }, /maxPhyAddr must be an integer from 36 to 52, got 35/],
    ['maxPhyAddr 53', { memoryBytes: MB, maxPhyAddr: 53 }, /maxPhyAddr .* got 53/],
    ['la57 not a boolean', bad({ memoryBytes: MB, la57: 1 }), /la57 must be true or false, got 1/],
    ['pku not a boolean', bad({ memoryBytes: MB, pku: 'yes' }), /pku must be true or false, got yes/],
    ['gbPages not a boolean', bad({ memoryBytes: MB, gbPages: null }), /gbPages must be true or false, got null/],
    ['pcid not a boolean', bad({ memoryBytes: MB, pcid: 0 }), /pcid must be true or false/],
    ['invpcid not a boolean', bad({ memoryBytes: MB, invpcid: 'false' }), /invpcid must be true or false/],
    ['tlb not an object', bad({ memoryBytes: MB, tlb: 5 }), /tlb must be an object/],
    ['an unknown TLB array', bad({ memoryBytes: MB, tlb: { l2: { sets: 1, ways: 1 } } }), /tlb.l2 is not a TLB option/],
    ['tlb.unified not a boolean', bad({ memoryBytes: MB, tlb: { unified: 'no' } }), /tlb.unified must be true or false/],
    ['a geometry that is not an object', bad({ memoryBytes: MB, tlb: { stlb: 1536 } }), /tlb.stlb must be \{ sets, ways \}/],
    ['an unknown geometry field', bad({ memoryBytes: MB, tlb: { stlb: { sets: 1, ways: 1, size: 2 } } }), /tlb.stlb.size is not a geometry field \(sets, ways\)/],
    ['sets not a power of two', { memoryBytes: MB, tlb: { l1d4k: { sets: 12, ways: 4 } } }, /tlb.l1d4k.sets must be a power of two, got 12/],
    ['sets 0 with ways 4', { memoryBytes: MB, tlb: { l1d2m: { sets: 0, ways: 4 } } }, /tlb.l1d2m: sets and ways must both be 0 \(no array\) or both positive/],
    ['ways 65', { memoryBytes: MB, tlb: { l1i4k: { sets: 1, ways: 65 } } }, /tlb.l1i4k.ways must be an integer from 0 to 64, got 65/],
    ['sets 131072', { memoryBytes: MB, tlb: { stlb: { sets: 131072, ways: 1 } } }, /tlb.stlb.sets must be an integer from 0 to 65536/],
    ['negative ways', { memoryBytes: MB, tlb: { stlb1g: { sets: 1, ways: -1 } } }, /tlb.stlb1g.ways/],
    ['an unknown replacement', bad({ memoryBytes: MB, tlb: { replacement: 'plru' } }), /tlb.replacement must be "lru", "fifo" or "random", got plru/],
    ['psc not an object', bad({ memoryBytes: MB, psc: 5 }), /psc must be an object/],
    ['an unknown PSC array', bad({ memoryBytes: MB, psc: { pte: { sets: 1, ways: 1 } } }), /psc.pte is not a paging-structure-cache option/],
    ['psc.enabled not a boolean', bad({ memoryBytes: MB, psc: { enabled: 1 } }), /psc.enabled must be true or false/],
    ['a bad PSC geometry', { memoryBytes: MB, psc: { pde: { sets: 3, ways: 1 } } }, /psc.pde.sets must be a power of two, got 3/],
    ['clockGhz 0', { memoryBytes: MB, clockGhz: 0 }, /clockGhz must be a positive number, got 0/],
    ['clockGhz Infinity', { memoryBytes: MB, clockGhz: Infinity }, /clockGhz must be a positive number, got Infinity/],
    ['clockGhz a string', bad({ memoryBytes: MB, clockGhz: '3' }), /clockGhz/],
    ['cost not an object', bad({ memoryBytes: MB, cost: 7 }), /cost must be an object of hardware costs/],
    ['cost null', bad({ memoryBytes: MB, cost: null }), /cost must be an object/],
    ['seed a fraction', { memoryBytes: MB, seed: 0.5 }, /seed must be an integer, got 0.5/],
    ['seed a string', bad({ memoryBytes: MB, seed: '1' }), /seed must be an integer, got 1/],
  ])('%s', (_name, opts, msg) => {
    expect(() => resolveConfig(opts)).toThrow(ConfigError);
    expect(() => resolveConfig(opts)).toThrow(msg);
    expect(() => new Machine(opts)).toThrow(msg);
  });

  it.each([
    ['an unknown cost field', bad({ memoryBytes: MB, cost: { tlbMiss: 3 } }), 'hw.tlbMiss', /cost model field "hw.tlbMiss" is not a hardware cost/],
    ['a negative cost', { memoryBytes: MB, cost: { invlpg: -1 } }, 'hw.invlpg', /cost model field "hw.invlpg" must be a finite number >= 0, got -1/],
    ['a NaN cost', { memoryBytes: MB, cost: { access: NaN } }, 'hw.access', /"hw.access" must be a finite number/],
    ['a string cost', bad({ memoryBytes: MB, cost: { ipiAck: '125' } }), 'hw.ipiAck', /"hw.ipiAck" must be a finite number >= 0, got 125/],
  ])('cost: %s is a CostModelError naming the field', (_name, opts, field, msg) => {
    let err: unknown;
    try {
      resolveConfig(opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CostModelError);
    expect((err as CostModelError).field).toBe(field);
    expect((err as Error).message).toMatch(msg);
  });

  it('ConfigError is named', () => {
    expect(new ConfigError('x').name).toBe('ConfigError');
  });
});
