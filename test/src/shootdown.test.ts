/**
 * `mmulab shootdown` end to end through main(): the table, the JSON document (validated against
 * its JSON Schema) with figures that follow from the runs, the CSV and HTML files, the same
 * numbers whatever --jobs and across shards joined by `mmulab merge`, exit code 1 for a failed
 * check (also in a merged result) and exit code 2 with a line naming the problem for bad input.
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { main } from '../../src/cli.ts';
import { POINT_FIELDS, SHOOTDOWN_JSON_SCHEMA } from '../../src/experiments/shootdown-report.ts';
import type { ShootdownReport } from '../../src/experiments/shootdown.ts';
import { effectiveCostModel } from '../../src/experiments/cost_model.ts';

const validate = new Ajv2020({ allErrors: true }).compile(SHOOTDOWN_JSON_SCHEMA);

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

const dir = mkdtempSync(join(tmpdir(), 'mmulab-shootdown-'));
const SMALL = ['shootdown', '--cpus-list', '2', '--pages', '1,64', '--policy', 'linux,latr', '--rounds', '1'];

let cached: ShootdownReport | null = null;
async function smallJson(): Promise<ShootdownReport> {
  if (!cached) {
    const r = await run([...SMALL, '--jobs', '1', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    cached = JSON.parse(r.out) as ShootdownReport;
  }
  return cached;
}

describe('mmulab shootdown', () => {
  it('prints the table, the comparison with Linux and the checks', async () => {
    const r = await run([...SMALL, '--jobs', '1']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[1]).toMatch(/^op\s+cpus\s+pages\s+policy\s+lazy\s+pcid\s+batch\s+lat µs\s+flush µs\s+IPIs\s+INVLPG\s+flushed\s+refills\s+stale\s+window µs$/);
    const rows = lines.filter((l) => /^munmap\s/.test(l));
    expect(rows).toHaveLength(4);
    expect(rows.map((l) => l.split(/\s+/).slice(1, 4).join(' '))).toEqual(['2 1 linux', '2 1 latr', '2 64 linux', '2 64 latr']);
    const doc = await smallJson();
    // The table shows the same figures as the JSON.
    expect(rows[0]!.split(/\s+/)[7]).toBe(doc.points[0]!.latencyUs.toFixed(2));
    expect(r.out).toMatch(/latr\s+latency −\d+%, IPIs 0\.0 vs 1\.0/);
    expect(r.out).toContain('Checks: no usable stale entry after any synchronous flush');
  });

  it('documents its schema in docs/schemas/shootdown.schema.json, identical to the one the code uses', () => {
    const doc = JSON.parse(readFileSync(new URL('../../docs/schemas/shootdown.schema.json', import.meta.url), 'utf8')) as unknown;
    expect(doc).toEqual(JSON.parse(JSON.stringify(SHOOTDOWN_JSON_SCHEMA)));
  });

  it('prints a JSON document that follows its schema, with figures computed by the runs', async () => {
    const doc = await smallJson();
    expect(validate(doc) ? [] : validate.errors).toEqual([]);
    // The schema is strict enough to reject a wrong document.
    expect(validate({ ...doc, points: [{ ...doc.points[0], ipis: 'many' }] })).toBe(false);
    expect(validate({ ...doc, checks: { ...doc.checks, kasan: 1 } })).toBe(false);
    expect(doc.schema).toBe('mmulab.shootdown/1');
    expect(doc.config).toMatchObject({ seed: 1, rounds: 1, workingSet: 32, hz: 1000, clockGhz: 3, tickUs: 1000 });
    expect(doc.grid).toEqual({ ops: ['munmap'], cpus: [2], pages: [1, 64], policies: ['linux', 'latr'], lazy: [true], pcid: [true], batch: [1] });
    expect(validate({ ...doc, grid: { ...doc.grid, pages: undefined } })).toBe(false);
    expect(validate({ ...doc, extra: 1 })).toBe(false);
    expect(doc.points.map((p) => `${p.pages} ${p.policy}`)).toEqual(['1 linux', '1 latr', '64 linux', '64 latr']);
    const [l1, t1, l64, t64] = doc.points as [ShootdownReport['points'][0], ShootdownReport['points'][0], ShootdownReport['points'][0], ShootdownReport['points'][0]];
    // Linux: one IPI to the other CPU, per-page INVLPG at 1 page, a full flush above 33 pages.
    expect(l1.ipis).toBe(1);
    expect(l1.invlpgs).toBe(2);
    expect(l64.invlpgs).toBe(0);
    expect(l64.fullFlushes).toBeGreaterThanOrEqual(2);
    // The full flush drops the other CPU's working set, which it walks again afterwards.
    expect(l64.refillWalks).toBeGreaterThan(l1.refillWalks);
    // LATR: no IPI, less initiator latency, stale entries in the lazy window, within one tick.
    for (const [l, t] of [[l1, t1], [l64, t64]] as const) {
      expect(t.ipis).toBe(0);
      expect(t.deferred).toBe(1);
      expect(t.latencyUs).toBeLessThan(l.latencyUs);
      expect(l.staleAfter).toBe(0);
      expect(t.staleAfter).toBeGreaterThan(0);
      expect(t.windowUsMax).toBeGreaterThan(0);
      expect(t.windowUsMax).toBeLessThanOrEqual(doc.config.tickUs);
      expect(t.heldPages).toBe(t.pages);
      expect(t.releaseViolations).toBe(0);
    }
    expect(doc.checks).toEqual({ staleAfterSynchronous: 0, releaseViolations: 0, kasan: 0, invariantProblems: 0 });
  });

  it('records the effective cost model, and the --cost-model file it came from', async () => {
    const doc = await smallJson();
    expect(doc.config.costs).toEqual(effectiveCostModel(undefined));
    expect(doc.config.costModel).toBeUndefined();
    expect(validate({ ...doc, config: { ...doc.config, costs: undefined } })).toBe(false);
    const file = join(dir, 'costs.json');
    writeFileSync(file, JSON.stringify({ clockGhz: 2, hw: { ipiLatency: 9000 } }));
    const r = await run([...SMALL, '--pages', '1', '--policy', 'linux', '--jobs', '1', '--cost-model', file, '--json']);
    expect(r.code).toBe(0);
    const slow = JSON.parse(r.out) as ShootdownReport;
    expect(validate(slow) ? [] : validate.errors).toEqual([]);
    expect(slow.config.costModel).toBe(file);
    expect(slow.config.clockGhz).toBe(2);
    expect(slow.config.costs).toEqual({ ...effectiveCostModel(undefined), clockGhz: 2, hw: { ...effectiveCostModel(undefined).hw, ipiLatency: 9000 } });
  });

  it('writes the CSV: a header and one row per point, the same figures as the JSON', async () => {
    const csv = join(dir, 'points.csv');
    const r = await run([...SMALL, '--jobs', '1', '--csv', csv, '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as ShootdownReport;
    const lines = readFileSync(csv, 'utf8').trimEnd().split('\n');
    expect(lines[0]).toBe(POINT_FIELDS.join(','));
    expect(lines).toHaveLength(1 + doc.points.length);
    const cells = lines[2]!.split(',');
    expect(cells.slice(0, 7)).toEqual(['munmap', '2', '1', 'latr', 'on', 'on', '1']);
    expect(Number(cells[POINT_FIELDS.indexOf('latencyUs')])).toBeCloseTo(doc.points[1]!.latencyUs, 6);
    expect(Number(cells[POINT_FIELDS.indexOf('staleAfter')])).toBe(doc.points[1]!.staleAfter);
  });

  it('writes a self-contained HTML report with SVG charts', async () => {
    const html = join(dir, 'report.html');
    const r = await run([...SMALL, '--jobs', '1', '--html', html]);
    expect(r.code).toBe(0);
    const page = readFileSync(html, 'utf8');
    expect(page.startsWith('<!doctype html>')).toBe(true);
    expect((page.match(/<svg /g) ?? []).length).toBeGreaterThanOrEqual(5);
    expect(page).toContain('Initiator latency');
    expect(page).toContain('mmulab shootdown --cpus-list 2 --pages 1,64 --policy linux,latr --rounds 1');
    // Nothing fetched from anywhere: no scripts, no external links, fonts or stylesheets.
    expect(page).not.toMatch(/<script|<link|@import|url\(|src=/i);
    expect(page.replace(/xmlns="http:\/\/www\.w3\.org\/2000\/svg"/g, '')).not.toMatch(/https?:\/\//);
  });

  it('gives the same numbers on worker processes and across shards merged back', async () => {
    const one = await smallJson();
    const two = await run([...SMALL, '--jobs', '2', '--json']);
    expect(two.code).toBe(0);
    expect(JSON.parse(two.out)).toEqual(one);
    const files: string[] = [];
    for (const shard of ['1/2', '2/2']) {
      const r = await run([...SMALL, '--jobs', '1', '--shard', shard, '--json']);
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.out) as ShootdownReport;
      expect(doc.shard).toEqual({ index: Number(shard[0]), count: 2 });
      expect(validate(doc) ? [] : validate.errors).toEqual([]);
      expect(doc.grid).toEqual(one.grid);
      expect(doc.points).toHaveLength(2);
      const f = join(dir, `part${shard[0]}.json`);
      writeFileSync(f, r.out);
      files.push(f);
    }
    const merged = await run(['merge', ...files.reverse(), '--json']);
    expect(merged.code).toBe(0);
    expect(merged.out).toBe(JSON.stringify(one, null, 2) + '\n');
  });

  it('exits 1 when a check fails (merged shards, one with a KASAN report)', async () => {
    const files: string[] = [];
    for (const shard of ['1/2', '2/2']) {
      const r = await run([...SMALL, '--jobs', '1', '--shard', shard, '--json']);
      const doc = JSON.parse(r.out) as ShootdownReport;
      if (shard === '2/2') doc.points[0]!.kasan = 1;
      const f = join(dir, `kasan${shard[0]}.json`);
      writeFileSync(f, JSON.stringify(doc));
      files.push(f);
    }
    const r = await run(['merge', ...files]);
    expect(r.code).toBe(1);
    expect(r.out).toContain('Checks FAILED: 1 KASAN reports');
    expect(r.err).toBe('mmulab: shootdown checks failed: 1 KASAN reports\n');
  });

  it('prints help with examples', async () => {
    const r = await run(['shootdown', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: mmulab shootdown');
    expect(r.out).toContain('Examples:');
    expect(r.out).toContain('mmulab shootdown --cpus-list 2,4,8,16');
    expect(r.out).toContain('latr      LATR (Kumar et al., ASPLOS 2018)');
  });

  const BAD: [string[], RegExp][] = [
    [['--pages', '0'], /--pages values must be between 1 and 4096, got 0/],
    [['--pages', '1,x'], /--pages must be a comma-separated list of integers, got "x"/],
    [['--cpus-list', '0'], /--cpus-list values must be between 1 and 256, got 0/],
    [['--cpus-list', '300'], /--cpus-list values must be between 1 and 256, got 300/],
    [['--policy', 'linux,bogus'], /unknown policy "bogus" \(known: linux, full, per-page, latr\)/],
    [['--lazy', 'maybe'], /unknown --lazy value "maybe" \(known: on, off\)/],
    [['--op', 'fork'], /unknown op "fork"/],
    [['--batch', '65'], /--batch values must be between 1 and 64, got 65/],
    [['--shard', '3/2'], /--shard 3\/2: i must be between 1 and n/],
    [['--engine', 'quick'], /--engine.*quick/],
    [['--csv', '/nonexistent-dir/x.csv'], /--csv \/nonexistent-dir\/x\.csv: cannot write there/],
    [['--merge', 'part1.json'], /shootdown --merge is gone: join shards with mmulab merge FILES/],
    [['--cpus', '0'], /--cpus must be between 1 and 64, got 0/],
  ];
  for (const [args, message] of BAD) {
    it(`answers ${args.join(' ')} with exit code 2 and a line naming the problem`, async () => {
      const r = await run(['shootdown', ...args, '--jobs', '1']);
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      const first = r.err.split('\n')[0]!;
      expect(first).toMatch(message);
      expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
    });
  }
});
