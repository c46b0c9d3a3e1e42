/**
 * hw/cost.ts — the cycle cost model: the defaults, parseCostModel (omitted fields keep defaults;
 * unknown fields, non-numbers, negatives, non-finite numbers and a zero clock are rejected with a
 * CostModelError naming the field), loadCostModelFile (bad JSON and unreadable files are rejected
 * naming the file; field errors name both), and that a machine charges what its model says.
 * Temporary files live under os.tmpdir().
 */

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CostModelError, DEFAULT_CLOCK_GHZ, DEFAULT_HW_COSTS, Machine, PageTableBuilder, cyclesToMicros, defaultCostModel, loadCostModelFile, parseCostModel } from '../../hw/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'mmulab-cost-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function caught(fn: () => unknown): CostModelError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CostModelError);
    return e as CostModelError;
  }
  throw new Error('expected a CostModelError');
}

describe('defaults', () => {
  it('every hardware cost has its documented default and the table is frozen', () => {
    expect(DEFAULT_HW_COSTS).toEqual({
      access: 4, tlbL1Hit: 0, stlbHit: 12, walkMemRef: 15, pscHit: 0, adUpdate: 20, pageFault: 100, invlpg: 260, invpcidAddr: 260, invpcidContext: 96, cr3Write: 96, crWrite: 96,
      flushAll: 96, ipiSend: 300, ipiLatency: 3720, ipiHandlerEntry: 1000, ipiAck: 125,
    });
    expect(Object.isFrozen(DEFAULT_HW_COSTS)).toBe(true);
    expect(DEFAULT_CLOCK_GHZ).toBe(3);
    const m = defaultCostModel();
    expect(m).toEqual({ clockGhz: 3, hw: { ...DEFAULT_HW_COSTS } });
    m.hw.invlpg = 1;
    expect(defaultCostModel().hw.invlpg).toBe(260);
  });

  it('cyclesToMicros divides by the clock in GHz × 1000', () => {
    expect(cyclesToMicros(3000, 3)).toBe(1);
    expect(cyclesToMicros(3720, 3)).toBeCloseTo(1.24, 10);
  });
});

describe('parseCostModel', () => {
  it('keeps defaults for omitted fields and takes the given ones; ignores $schema, description and other layers’ sections', () => {
    const m = parseCostModel({ $schema: 'x', description: 'test', clockGhz: 2, hw: { invlpg: 100, ipiLatency: 0 }, kernel: { anything: -1 } }, ['kernel']);
    expect(m).toEqual({ clockGhz: 2, hw: { ...DEFAULT_HW_COSTS, invlpg: 100, ipiLatency: 0 } });
    expect(parseCostModel({})).toEqual(defaultCostModel());
  });

  it.each([
    ['not an object', 42, '(root)', /a cost model must be a JSON object/],
    ['null', null, '(root)', /must be a JSON object/],
    ['an array', [1], '(root)', /must be a JSON object/],
    ['an unknown top-level field', { hardware: {} }, 'hardware', /cost model field "hardware" is not known \(known: clockGhz, hw\)/],
    ['another layer’s section not declared', { kernel: {} }, 'kernel', /"kernel" is not known/],
    ['hw not an object', { hw: 5 }, 'hw', /cost model field "hw" must be an object/],
    ['hw an array', { hw: [] }, 'hw', /"hw" must be an object/],
    ['an unknown hw field', { hw: { tlbMiss: 1 } }, 'hw.tlbMiss', /cost model field "hw.tlbMiss" is not a hardware cost \(known: access, tlbL1Hit/],
    ['a string cost', { hw: { invlpg: '260' } }, 'hw.invlpg', /cost model field "hw.invlpg" must be a finite number >= 0, got "260"/],
    ['a negative cost', { hw: { access: -4 } }, 'hw.access', /"hw.access" must be a finite number >= 0, got -4/],
    ['a non-finite cost', { hw: { walkMemRef: Infinity } }, 'hw.walkMemRef', /"hw.walkMemRef" must be a finite number/],
    ['a null cost', { hw: { ipiAck: null } }, 'hw.ipiAck', /got null/],
    ['clockGhz 0', { clockGhz: 0 }, 'clockGhz', /cost model field "clockGhz" must be greater than 0/],
    ['clockGhz negative', { clockGhz: -3 }, 'clockGhz', /"clockGhz" must be a finite number >= 0, got -3/],
    ['clockGhz a string', { clockGhz: '3' }, 'clockGhz', /"clockGhz" must be a finite number/],
  ])('rejects %s, naming the field', (_name, obj, field, msg) => {
    const e = caught(() => parseCostModel(obj));
    expect(e.field).toBe(field);
    expect(e.message).toMatch(msg);
    expect(e.name).toBe('CostModelError');
  });
});

describe('loadCostModelFile', () => {
  it('reads a valid file and returns the model and the raw object', () => {
    const p = file('good.json', JSON.stringify({ clockGhz: 4, hw: { stlbHit: 9 }, kernel: { syscall: 70 } }));
    const { model, raw } = loadCostModelFile(p, ['kernel']);
    expect(model).toEqual({ clockGhz: 4, hw: { ...DEFAULT_HW_COSTS, stlbHit: 9 } });
    expect(raw).toEqual({ clockGhz: 4, hw: { stlbHit: 9 }, kernel: { syscall: 70 } });
  });

  it('rejects bad JSON naming the file', () => {
    const p = file('bad.json', '{ "hw": { "invlpg": 260, } }');
    const e = caught(() => loadCostModelFile(p));
    expect(e.field).toBe('(file)');
    expect(e.message).toContain(`cost model ${p} is not valid JSON`);
  });

  it('rejects an unreadable file naming it', () => {
    const missing = join(dir, 'missing.json');
    const e = caught(() => loadCostModelFile(missing));
    expect(e.field).toBe('(file)');
    expect(e.message).toContain(`cannot read cost model ${missing}`);
    expect(caught(() => loadCostModelFile(dir)).message).toContain(`cannot read cost model ${dir}`); // a directory
  });

  it.each([
    ['an unknown field', { hw: { bogus: 1 } }, 'hw.bogus'],
    ['a negative number', { hw: { pageFault: -100 } }, 'hw.pageFault'],
    ['a non-number', { clockGhz: 'fast' }, 'clockGhz'],
    ['an unknown section', { user: {} }, 'user'],
  ])('rejects %s naming the file and the field', (name, obj, field) => {
    const p = file(`${name.replace(/ /g, '-')}.json`, JSON.stringify(obj));
    const e = caught(() => loadCostModelFile(p));
    expect(e.field).toBe(field);
    expect(e.message.startsWith(`${p}: cost model field "${field}"`)).toBe(true);
  });
});

describe('the model in a machine', () => {
  it('each event charges its configured cost', () => {
    const m = new Machine({ memoryBytes: 2 << 20, cost: { access: 3, tlbL1Hit: 2, walkMemRef: 10, adUpdate: 7, invlpg: 50, pageFault: 1000, cr3Write: 5, pscHit: 0 }, psc: { enabled: false } });
    expect(m.config.cost.hw).toMatchObject({ access: 3, invlpg: 50 });
    const b = new PageTableBuilder(m, 0x100000, 0x140000);
    b.map(0x400000, 0x200000, { A: true, D: true });
    const cpu = m.cpu(0);
    expect(cpu.writeCr3(BigInt(b.root))).toEqual({ ok: true });
    expect(cpu.cycles).toBe(5);
    cpu.access(0x400000, 'read'); // a 4-level walk: 4 references, and A set in the three upper entries the builder left clear
    expect(cpu.cycles).toBe(5 + 3 + 4 * 10 + 3 * 7);
    cpu.access(0x400008, 'read'); // an L1 hit
    expect(cpu.cycles).toBe(69 + 3 + 2);
    cpu.invlpg(0x400000);
    expect(cpu.cycles).toBe(74 + 50);
    cpu.access(0x500000, 'read'); // #PF at the PTE level: 4 references + the fault, no A/D update
    expect(cpu.cycles).toBe(124 + 3 + 40 + 1000);
    b.map(0x401000, 0x201000, { A: false, D: false });
    const before = cpu.cycles;
    cpu.access(0x401000, 'write'); // the walk sets A and D in the PTE: one locked update
    expect(cpu.cycles).toBe(before + 3 + 40 + 7);
  });
});
