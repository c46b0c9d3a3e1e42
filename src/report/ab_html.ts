/**
 * src/report/ab_html.ts — the HTML report of `mmulab ab` (and `mmulab merge`): one section per
 * workload with the charts people look at first — latency distributions per design (box plots
 * over every transaction of every seed), throughput with its confidence interval, the receiver's
 * mmap_lock traffic split into what the driver caused and what the receiver's own threads
 * suffered, and TLB shootdown work — then the table of means and the differences beyond seed
 * noise. Self-contained: inline SVG from svg.ts, no network.
 */

import type { AbResult, AbSummaryRow } from '../experiments/ab.ts';
import { attackMachineText, SUMMARY_METRICS, WORKLOAD_HELP } from '../experiments/ab.ts';
import { barChart, boxChart, formatNumber } from './svg.ts';
import { callout, figure, grid, h, page, table, type Content, type Section } from './html.ts';

function mean(row: AbSummaryRow, key: string): number {
  return row.metrics[key]?.mean ?? NaN;
}

function withCi(row: AbSummaryRow, key: string): string {
  const iv = row.metrics[key];
  if (!iv) return '-';
  return Number.isFinite(iv.half) && iv.half > 0 ? `${formatNumber(iv.mean)} ± ${formatNumber(iv.half)}` : formatNumber(iv.mean);
}

export function abHtml(r: AbResult): string {
  const o = r.options;
  const sections: Section[] = [];
  for (const w of o.workloads) {
    const rows = r.summary.filter((s) => s.workload === w);
    if (!rows.length) continue;
    const configs = rows.map((x) => x.config);
    const cases = r.cases.filter((c) => c.workload === w);
    const latency = boxChart({
      title: 'Round-trip latency (every transaction, all seeds)',
      y: { label: 'virtual µs' },
      boxes: configs.map((c) => ({ label: c, values: cases.filter((x) => x.config === c).flatMap((x) => x.metrics.latencySampleUs) })),
      note: 'box: p25–p75, line: median, whiskers: p5–p95',
    });
    const throughput = barChart({
      title: 'Throughput (mean over seeds)',
      categories: configs,
      y: { label: 'transactions per virtual second' },
      series: [{ name: 'tx/s', values: rows.map((x) => mean(x, 'txPerSec')) }],
    });
    const locks = barChart({
      title: "Receiver's mmap_lock",
      categories: configs,
      y: { label: 'acquisitions / µs waited' },
      series: [
        { name: 'acquisitions by the driver', values: rows.map((x) => mean(x, 'driverLock')) },
        { name: 'driver acquisitions that waited', values: rows.map((x) => mean(x, 'driverContended')) },
        { name: 'µs the receiver waited', values: rows.map((x) => mean(x, 'receiverWait')) },
      ],
    });
    const tlb = barChart({
      title: 'Page-table and TLB work',
      categories: configs,
      y: { label: 'count per run' },
      series: [
        { name: 'receiver page faults', values: rows.map((x) => mean(x, 'faults')) },
        { name: 'PTE installs', values: rows.map((x) => mean(x, 'installs')) },
        { name: 'TLB flushes', values: rows.map((x) => mean(x, 'shootdowns')) },
        { name: 'IPIs', values: rows.map((x) => mean(x, 'ipis')) },
      ],
    });
    const diffs: { config: string; metric: string; diff: string }[] = [];
    for (const row of rows.slice(1)) {
      for (const m of SUMMARY_METRICS) {
        const d = row.vsBaseline?.[m.key];
        if (!d?.significant) continue;
        diffs.push({ config: row.config, metric: m.label, diff: `${d.mean > 0 ? '+' : ''}${formatNumber(d.mean)} ± ${formatNumber(d.half)}${m.unit ? ' ' + m.unit : ''}` });
      }
    }
    const reports = rows.flatMap((x) => x.reports.map((t) => `${x.config}: ${t}`));
    const content: Content[] = [
      grid(figure(latency), figure(throughput), figure(locks), figure(tlb)),
      table(
        [
          { label: 'design', value: (x: AbSummaryRow) => x.config },
          ...SUMMARY_METRICS.map((m) => ({ label: m.label + (m.unit ? ` (${m.unit})` : ''), numeric: true, value: (x: AbSummaryRow) => withCi(x, m.key) })),
        ],
        rows,
        { caption: `means over ${o.seeds.length} seed(s) ± 95% confidence half-width` },
      ),
      diffs.length
        ? table(
            [
              { label: 'design', value: (x: (typeof diffs)[number]) => x.config },
              { label: 'metric', value: (x: (typeof diffs)[number]) => x.metric },
              { label: `difference from ${configs[0]} (95% CI, paired by seed)`, numeric: true, value: (x: (typeof diffs)[number]) => x.diff },
            ],
            diffs,
          )
        : callout('info', `No difference from ${configs[0]} beyond seed noise.`),
      reports.length ? callout('bad', h('ul', {}, ...reports.map((t) => h('li', {}, t)))) : callout('ok', 'No checker report in any run.'),
    ];
    sections.push({ title: w, intro: WORKLOAD_HELP[w], content });
  }
  if (r.attack?.length) {
    const configs = [...new Set(r.attack.map((v) => v.config))];
    const scenarios = [...new Set(r.attack.map((v) => v.scenario))];
    const cell = (c: string, s: string) => {
      const v = r.attack!.find((x) => x.config === c && x.scenario === s)!;
      const cls = v.verdict === 'vulnerable' ? 'bad' : v.verdict === 'immune' ? 'ok' : 'na';
      return h('span', { class: `verdict ${cls}`, title: v.summary }, v.verdict === 'not-applicable' ? 'n/a' : v.verdict);
    };
    sections.push({
      title: 'security scenarios',
      intro: `The scenarios of mmulab attack, run by the emulator against each design ${attackMachineText(r)}; hover a verdict for its evidence.`,
      content: [
        table([{ label: 'design', value: (c: string) => c }, ...scenarios.map((s) => ({ label: s, value: (c: string) => cell(c, s), title: r.attack!.find((x) => x.scenario === s)!.title }))], configs),
        h('ul', {}, ...scenarios.map((s) => h('li', {}, `${s}: ${r.attack!.find((x) => x.scenario === s)!.title}`))),
      ],
    });
  }
  return page({
    title: 'mmulab ab — binder page-mapping designs compared',
    subtitle: `${o.configs.join(' vs ')}`,
    meta: [
      ['workloads', o.workloads.join(', ')],
      ['seeds', o.seeds.join(', ')],
      ['CPUs', String(o.cpus)],
      ['transactions per worker', String(o.iterations)],
      ['cost model', o.costModel ?? 'built-in'],
      ['engine', o.engine === 'parallel' ? 'parallel (not reproducible by seed)' : 'deterministic'],
      ['time', 'virtual (the emulated machine’s clock)'],
    ],
    sections,
  });
}
