/**
 * src/experiments/shootdown-report.ts — how `mmulab shootdown` shows its results: the terminal
 * table with the comparison of LATR against Linux and the correctness checks, the CSV file (one
 * row per point) and the HTML report (src/report/html.ts and svg.ts). The JSON document is the
 * ShootdownReport itself (src/experiments/shootdown.ts); SHOOTDOWN_JSON_SCHEMA describes it.
 */

import { barChart, boxChart, formatNumber, lineChart } from '../report/svg.ts';
import { callout, figure, grid, h, page, table, type Column, type Section } from '../report/html.ts';
import { OPS, POLICIES, POLICY_DESCRIPTIONS, type PointResult, type PolicyName, type ShootdownReport } from './shootdown.ts';
import { COST_MODEL_JSON_SCHEMA } from './cost_model.ts';

/** Per-point fields in CSV/JSON order, with a unit or meaning for the table header. */
export const POINT_FIELDS = [
  'op', 'cpus', 'pages', 'policy', 'lazy', 'pcid', 'batch',
  'latencyUs', 'latencyUsP50', 'latencyUsMax', 'flushUs', 'flushes', 'ipis', 'invlpgs', 'fullFlushes', 'entriesFlushed', 'refillWalks',
  'staleAfter', 'deferred', 'windowUsMean', 'windowUsMax', 'heldPages', 'releaseViolations', 'kasan', 'reports', 'invariantProblems',
] as const satisfies readonly (keyof PointResult)[];

/**
 * JSON Schema (draft 2020-12) of `mmulab shootdown --json`. Every metric is per changed range
 * and averaged over rounds unless its name says otherwise (…Max, staleAfter: the largest seen).
 */
export const SHOOTDOWN_JSON_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://mmulab.dev/schemas/shootdown.schema.json',
  title: 'mmulab shootdown result (mmulab shootdown --json, mmulab merge --json)',
  type: 'object',
  required: ['schema', 'config', 'grid', 'points', 'checks'],
  properties: {
    schema: { const: 'mmulab.shootdown/1' },
    config: {
      type: 'object',
      required: ['seed', 'rounds', 'workingSet', 'hz', 'clockGhz', 'tickUs', 'costs'],
      properties: {
        seed: { type: 'integer' },
        rounds: { type: 'integer' },
        workingSet: { type: 'integer' },
        hz: { type: 'number' },
        clockGhz: { type: 'number' },
        tickUs: { type: 'number' },
        costModel: { type: 'string', minLength: 1, description: 'the --cost-model file (absent: the built-in costs); merge does not compare it, only costs' },
        costs: { $ref: '#/$defs/costModel' },
        engine: { const: 'parallel', description: 'present when the points ran on the parallel engine: each is one run, not reproducible by seed' },
      },
      additionalProperties: false,
    },
    grid: {
      description: 'the whole sweep: its points are every combination of these values (a shard holds every count-th of them)',
      type: 'object',
      required: ['ops', 'cpus', 'pages', 'policies', 'lazy', 'pcid', 'batch'],
      properties: {
        ops: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: [...OPS] } },
        cpus: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'integer', minimum: 1 } },
        pages: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'integer', minimum: 1 } },
        policies: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: [...POLICIES] } },
        lazy: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'boolean' } },
        pcid: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'boolean' } },
        batch: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'integer', minimum: 1 } },
      },
      additionalProperties: false,
    },
    shard: { type: 'object', required: ['index', 'count'], properties: { index: { type: 'integer', minimum: 1 }, count: { type: 'integer', minimum: 1 } }, additionalProperties: false },
    points: {
      type: 'array',
      items: {
        type: 'object',
        required: [...POINT_FIELDS, 'samplesUs'],
        properties: {
          op: { enum: [...OPS] },
          policy: { enum: [...POLICIES] },
          lazy: { type: 'boolean' },
          pcid: { type: 'boolean' },
          cpus: { type: 'integer', minimum: 1 },
          pages: { type: 'integer', minimum: 1 },
          batch: { type: 'integer', minimum: 1 },
          samplesUs: { type: 'array', items: { type: 'number' } },
          ...Object.fromEntries(POINT_FIELDS.filter((f) => !['op', 'policy', 'lazy', 'pcid', 'cpus', 'pages', 'batch'].includes(f)).map((f) => [f, { type: 'number', minimum: 0 }])),
        },
        additionalProperties: false,
      },
    },
    checks: {
      type: 'object',
      required: ['staleAfterSynchronous', 'releaseViolations', 'kasan', 'invariantProblems'],
      properties: { staleAfterSynchronous: { const: 0 }, releaseViolations: { const: 0 }, kasan: { const: 0 }, invariantProblems: { const: 0 } },
      additionalProperties: false,
    },
  },
  additionalProperties: false,
  $defs: { costModel: COST_MODEL_JSON_SCHEMA },
} as const;

const onOff = (b: boolean): string => (b ? 'on' : 'off');

/** A count averaged over rounds: whole numbers as such, else one decimal. */
function cnt(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function num(v: number, digits = 2): string {
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Math.abs(v) >= 100) return v.toFixed(1);
  return v.toFixed(digits);
}

/** A point's dimensions other than the policy, as a key. */
function shape(p: PointResult): string {
  return `${p.op}|${p.cpus}|${p.pages}|${p.lazy}|${p.pcid}|${p.batch}`;
}

export interface PolicyComparison {
  policy: PolicyName;
  /** Points present for both this policy and Linux. */
  points: number;
  /** Geometric mean of latency(policy) / latency(linux). */
  latencyRatio: number;
  /** Mean IPIs per range, this policy and Linux. */
  ipis: number;
  linuxIpis: number;
  refillWalks: number;
  linuxRefillWalks: number;
  entriesFlushed: number;
  linuxEntriesFlushed: number;
}

/** Each policy against Linux on the points both ran. */
export function compareWithLinux(points: readonly PointResult[]): PolicyComparison[] {
  const linux = new Map(points.filter((p) => p.policy === 'linux').map((p) => [shape(p), p]));
  const out: PolicyComparison[] = [];
  for (const policy of POLICIES) {
    if (policy === 'linux') continue;
    const pairs = points.filter((p) => p.policy === policy && linux.has(shape(p))).map((p) => [p, linux.get(shape(p))!] as const);
    if (pairs.length === 0) continue;
    const mean = (f: (x: readonly [PointResult, PointResult]) => number): number => pairs.reduce((a, x) => a + f(x), 0) / pairs.length;
    const logRatio = mean(([a, b]) => Math.log(Math.max(a.latencyUs, 1e-9) / Math.max(b.latencyUs, 1e-9)));
    out.push({
      policy,
      points: pairs.length,
      latencyRatio: Math.exp(logRatio),
      ipis: mean(([a]) => a.ipis),
      linuxIpis: mean(([, b]) => b.ipis),
      refillWalks: mean(([a]) => a.refillWalks),
      linuxRefillWalks: mean(([, b]) => b.refillWalks),
      entriesFlushed: mean(([a]) => a.entriesFlushed),
      linuxEntriesFlushed: mean(([, b]) => b.entriesFlushed),
    });
  }
  return out;
}

function pct(ratio: number): string {
  const d = (ratio - 1) * 100;
  return `${d >= 0 ? '+' : '−'}${Math.abs(d).toFixed(0)}%`;
}

/** Problems the checks found, one line each (empty when all is well). */
export function checkProblems(r: ShootdownReport): string[] {
  const c = r.checks;
  const out: string[] = [];
  if (c.staleAfterSynchronous) out.push(`${c.staleAfterSynchronous} usable stale TLB entries right after flushes of synchronous policies`);
  if (c.releaseViolations) out.push(`${c.releaseViolations} usable translations to pages LATR released`);
  if (c.kasan) out.push(`${c.kasan} KASAN reports`);
  if (c.invariantProblems) out.push(`${c.invariantProblems} mm invariant problems`);
  return out;
}

/** The terminal table, the comparison and the checks. */
export function formatTable(r: ShootdownReport): string {
  const cols: { head: string; cell: (p: PointResult) => string; left?: boolean }[] = [
    { head: 'op', cell: (p) => p.op, left: true },
    { head: 'cpus', cell: (p) => String(p.cpus) },
    { head: 'pages', cell: (p) => String(p.pages) },
    { head: 'policy', cell: (p) => p.policy, left: true },
    { head: 'lazy', cell: (p) => onOff(p.lazy), left: true },
    { head: 'pcid', cell: (p) => onOff(p.pcid), left: true },
    { head: 'batch', cell: (p) => String(p.batch) },
    { head: 'lat µs', cell: (p) => num(p.latencyUs) },
    { head: 'flush µs', cell: (p) => num(p.flushUs) },
    { head: 'IPIs', cell: (p) => cnt(p.ipis) },
    { head: 'INVLPG', cell: (p) => cnt(p.invlpgs) },
    { head: 'flushed', cell: (p) => cnt(p.entriesFlushed) },
    { head: 'refills', cell: (p) => cnt(p.refillWalks) },
    { head: 'stale', cell: (p) => String(p.staleAfter) },
    { head: 'window µs', cell: (p) => (p.policy === 'latr' ? num(p.windowUsMax, 0) : '-') },
  ];
  const rows = r.points.map((p) => cols.map((c) => c.cell(p)));
  const widths = cols.map((c, i) => Math.max(c.head.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((s, i) => (cols[i]!.left ? s.padEnd(widths[i]!) : s.padStart(widths[i]!))).join('  ').trimEnd();
  const out: string[] = [];
  out.push(`TLB shootdown — per changed range, mean of ${r.config.rounds} rounds; ${r.config.clockGhz} GHz, tick ${num(r.config.tickUs, 0)} µs, working set ${r.config.workingSet} pages${r.config.engine === 'parallel' ? '; parallel engine (not reproducible by seed)' : ''}${r.shard ? `; shard ${r.shard.index}/${r.shard.count}` : ''}`);
  out.push(line(cols.map((c) => c.head)));
  for (const row of rows) out.push(line(row));
  out.push('');
  out.push('lat: initiator latency of the call; flush: its part in flush_tlb_mm_range; IPIs, INVLPG, flushed (TLB entries dropped, all CPUs) and');
  out.push('refills (page walks the flush caused on the other CPUs) count the call and the 1.5 ticks after it; stale: usable stale');
  out.push('translations right after the call returned (max over rounds); window: LATR\'s longest lazy window.');
  const cmp = compareWithLinux(r.points);
  if (cmp.length) {
    out.push('');
    out.push('Against Linux on the same points (geometric mean of latency ratios; means of the rest):');
    for (const c of cmp) {
      out.push(`  ${c.policy.padEnd(8)} latency ${pct(c.latencyRatio)}, IPIs ${c.ipis.toFixed(1)} vs ${c.linuxIpis.toFixed(1)}, refill walks ${c.refillWalks.toFixed(0)} vs ${c.linuxRefillWalks.toFixed(0)}, entries flushed ${c.entriesFlushed.toFixed(0)} vs ${c.linuxEntriesFlushed.toFixed(0)} (${c.points} points)`);
    }
  }
  const latr = r.points.filter((p) => p.policy === 'latr');
  if (latr.length) {
    const maxWin = Math.max(...latr.map((p) => p.windowUsMax));
    const staleMax = Math.max(...latr.map((p) => p.staleAfter));
    out.push(`  LATR's lazy window: up to ${num(maxWin, 0)} µs, with up to ${staleMax} usable stale entries meanwhile (by design); pages held until every CPU caught up: ${latr.reduce((a, p) => a + p.heldPages, 0)}.`);
  }
  out.push('');
  const problems = checkProblems(r);
  out.push(problems.length ? `Checks FAILED: ${problems.join('; ')}.` : 'Checks: no usable stale entry after any synchronous flush, none reaching a page LATR released, no KASAN report, mm invariants hold.');
  return out.join('\n') + '\n';
}

function csvCell(v: unknown): string {
  const s = typeof v === 'boolean' ? (v ? 'on' : 'off') : typeof v === 'number' ? String(Number(v.toPrecision(10))) : String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** One header row, then one row per point (samples left out). */
export function toCsv(points: readonly PointResult[]): string {
  const lines = [POINT_FIELDS.join(',')];
  for (const p of points) lines.push(POINT_FIELDS.map((f) => csvCell(p[f])).join(','));
  return lines.join('\n') + '\n';
}

const POLICY_COLORS: Record<PolicyName, string> = { linux: '#0072B2', full: '#E69F00', 'per-page': '#009E73', latr: '#CC79A7' };

/** The HTML report. `command` is shown under the title. */
export function toHtml(r: ShootdownReport, command: string): string {
  const pts = r.points;
  const first = pts[0];
  const sections: Section[] = [];
  const problems = checkProblems(r);
  const policies = POLICIES.filter((p) => pts.some((x) => x.policy === p));
  sections.push({
    title: 'Summary',
    content: [
      problems.length ? callout('bad', `Checks failed: ${problems.join('; ')}.`) : callout('ok', 'Correct: no usable stale TLB entry after any synchronous flush, none reaching a page LATR released, no KASAN report, mm invariants hold.'),
      h('ul', {}, ...policies.map((p) => h('li', {}, h('b', {}, p), ': ', POLICY_DESCRIPTIONS[p]))),
      compareWithLinux(pts).length
        ? table<PolicyComparison>(
            [
              { label: 'policy', value: (c) => c.policy },
              { label: 'latency vs Linux', value: (c) => pct(c.latencyRatio), numeric: true, title: 'geometric mean of per-point latency ratios' },
              { label: 'IPIs', value: (c) => num(c.ipis, 1), numeric: true },
              { label: 'IPIs (Linux)', value: (c) => num(c.linuxIpis, 1), numeric: true },
              { label: 'refill walks', value: (c) => num(c.refillWalks, 0), numeric: true },
              { label: 'refill walks (Linux)', value: (c) => num(c.linuxRefillWalks, 0), numeric: true },
              { label: 'points', value: (c) => c.points, numeric: true },
            ],
            compareWithLinux(pts),
            { caption: 'Each policy against Linux on the same points (per changed range)' },
          )
        : null,
    ],
  });
  if (first) {
    // The main slice: the first op, lazy, pcid and batch value of the sweep.
    const slice = pts.filter((p) => p.op === first.op && p.lazy === first.lazy && p.pcid === first.pcid && p.batch === first.batch);
    const sliceName = `${first.op}, lazy TLB ${onOff(first.lazy)}, PCID ${onOff(first.pcid)}, batch ${first.batch}`;
    const cpusVals = [...new Set(slice.map((p) => p.cpus))].sort((a, b) => a - b);
    const pageVals = [...new Set(slice.map((p) => p.pages))].sort((a, b) => a - b);
    const series = (sel: (p: PointResult) => boolean, x: (p: PointResult) => number, y: (p: PointResult) => number) =>
      policies.map((pol) => ({ name: pol, color: POLICY_COLORS[pol], dashed: pol === 'latr', points: slice.filter((p) => p.policy === pol && sel(p)).map((p) => ({ x: x(p), y: y(p) })) }));
    const logPages = pageVals.length > 2 && pageVals[pageVals.length - 1]! / pageVals[0]! >= 8;
    sections.push({
      title: 'Initiator latency',
      intro: `How long the CPU that changes the page tables waits, per changed range (${sliceName}). Linux switches from INVLPG per page to a full flush above 33 pages; LATR sends no IPI for munmap.`,
      content: grid(
        ...cpusVals.map((c) =>
          figure(lineChart({ title: `${c} CPUs`, x: { label: 'pages per flush', scale: logPages ? 'log' : 'linear', base: 2 }, y: { label: 'latency (µs)', scale: 'log' }, series: series((p) => p.cpus === c, (p) => p.pages, (p) => p.latencyUs) })),
        ),
        cpusVals.length > 1
          ? figure(lineChart({ title: `Latency vs CPUs, ${pageVals[0]} page${pageVals[0] === 1 ? '' : 's'}`, x: { label: 'CPUs', zero: false }, y: { label: 'latency (µs)', scale: 'log' }, series: series((p) => p.pages === pageVals[0], (p) => p.cpus, (p) => p.latencyUs) }))
          : null,
      ),
    });
    const maxCpus = cpusVals[cpusVals.length - 1]!;
    const atMax = slice.filter((p) => p.cpus === maxCpus);
    const bars = (y: (p: PointResult) => number) => policies.map((pol) => ({ name: pol, color: POLICY_COLORS[pol], values: pageVals.map((pg) => atMax.find((p) => p.policy === pol && p.pages === pg)).map((p) => (p ? y(p) : null)) }));
    sections.push({
      title: 'What the other CPUs pay',
      intro: `At ${maxCpus} CPUs (${sliceName}): IPIs sent, TLB entries dropped on all CPUs, and the page walks the flush caused afterwards on the other CPUs (a full flush drops their whole working set; LATR's flush happens at their next tick).`,
      content: grid(
        figure(barChart({ title: 'IPIs per range', categories: pageVals.map((p) => `${p} p`), xLabel: 'pages per flush', y: { label: 'IPIs' }, series: bars((p) => p.ipis) })),
        figure(barChart({ title: 'TLB entries flushed per range', categories: pageVals.map((p) => `${p} p`), xLabel: 'pages per flush', y: { label: 'entries' }, series: bars((p) => p.entriesFlushed) })),
        figure(barChart({ title: 'Refill walks on other CPUs per range', categories: pageVals.map((p) => `${p} p`), xLabel: 'pages per flush', y: { label: 'page walks' }, series: bars((p) => p.refillWalks) })),
        figure(boxChart({ title: 'Initiator latency over all points and rounds', xLabel: 'policy', y: { label: 'latency (µs)', scale: 'log' }, boxes: policies.map((pol) => ({ label: pol, color: POLICY_COLORS[pol], values: slice.filter((p) => p.policy === pol).flatMap((p) => p.samplesUs) })) })),
      ),
    });
  }
  // Variants beyond the main slice (lazy, PCID, batch, op).
  const variant = (p: PointResult): string => `${p.op} lazy ${onOff(p.lazy)} pcid ${onOff(p.pcid)} b${p.batch}`;
  const variants = [...new Set(pts.map(variant))];
  if (variants.length > 1) {
    const mean = (xs: number[]): number | null => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
    const vb = (y: (p: PointResult) => number) => policies.map((pol) => ({ name: pol, color: POLICY_COLORS[pol], values: variants.map((v) => mean(pts.filter((p) => p.policy === pol && variant(p) === v).map(y))) }));
    sections.push({
      title: 'Lazy TLB, PCID, batching and operations',
      intro: 'Means over CPUs and pages of each variant of the sweep.',
      content: grid(
        figure(barChart({ title: 'Initiator latency per range', categories: variants, y: { label: 'µs' }, series: vb((p) => p.latencyUs), width: Math.max(640, variants.length * 90) })),
        figure(barChart({ title: 'IPIs per range', categories: variants, y: { label: 'IPIs' }, series: vb((p) => p.ipis), width: Math.max(640, variants.length * 90) })),
        figure(barChart({ title: 'Refill walks per range', categories: variants, y: { label: 'page walks' }, series: vb((p) => p.refillWalks), width: Math.max(640, variants.length * 90) })),
      ),
    });
  }
  sections.push({
    title: 'Correctness',
    intro: 'Right after each call the stale-entry inspector (hw/inspect.ts) lists the translations of the changed ranges that some CPU could still use: none may be left by a synchronous policy. LATR leaves them by design until each CPU\'s next tick (the lazy window) and holds the freed pages meanwhile; when it releases them the same inspector checks that no CPU can still reach them.',
    content: table<PointResult>(
      [
        { label: 'op', value: (p) => p.op },
        { label: 'cpus', value: (p) => p.cpus, numeric: true },
        { label: 'pages', value: (p) => p.pages, numeric: true },
        { label: 'policy', value: (p) => p.policy },
        { label: 'stale after call', value: (p) => p.staleAfter, numeric: true },
        { label: 'lazy window max µs', value: (p) => (p.policy === 'latr' ? num(p.windowUsMax, 0) : '—'), numeric: true },
        { label: 'held pages', value: (p) => p.heldPages, numeric: true },
        { label: 'reachable at release', value: (p) => p.releaseViolations, numeric: true },
        { label: 'KASAN', value: (p) => p.kasan, numeric: true },
        { label: 'invariant problems', value: (p) => p.invariantProblems, numeric: true },
      ],
      pts.filter((p) => p.staleAfter > 0 || p.releaseViolations > 0 || p.kasan > 0 || p.invariantProblems > 0),
      { caption: 'Points with anything to show (all others: 0 everywhere)' },
    ),
  });
  const columns: Column<PointResult>[] = POINT_FIELDS.map((f) => ({
    label: f,
    numeric: typeof pts[0]?.[f] === 'number',
    value: (p: PointResult) => {
      const v = p[f];
      return typeof v === 'boolean' ? onOff(v) : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : num(v)) : String(v);
    },
  }));
  sections.push({ title: 'All points', content: table(columns, pts) });
  return page({
    title: 'TLB shootdown experiments',
    subtitle: command,
    meta: [
      ['points', String(pts.length)],
      ['rounds per point', String(r.config.rounds)],
      ['seed', String(r.config.seed) + (r.config.engine === 'parallel' ? ' (parallel engine: not reproducible by seed)' : '')],
      ['clock', `${r.config.clockGhz} GHz`],
      ['scheduler tick', `${formatNumber(r.config.tickUs)} µs`],
      ['working set', `${r.config.workingSet} pages per thread`],
      ...(r.shard ? [['shard', `${r.shard.index}/${r.shard.count}`] as const] : []),
    ],
    sections,
  });
}
