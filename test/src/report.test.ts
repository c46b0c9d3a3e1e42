/**
 * The report library (src/report/html.ts, src/report/svg.ts): escaping of every string from the
 * data, the page's self-containment, and charts whose geometry follows from the data — ticks
 * that cover the values, log scales, gaps for missing values, box statistics.
 */

import { describe, expect, it } from 'vitest';
import { callout, escapeHtml, figure, h, page, raw, render, table } from '../../src/report/html.ts';
import { barChart, boxChart, formatNumber, lineChart, niceTicks, quantile } from '../../src/report/svg.ts';

const EVIL = '<script>alert("x")</script> & \'y\'';

describe('html', () => {
  it('escapes text and attribute values, and passes trusted markup through', () => {
    expect(escapeHtml(EVIL)).toBe('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;');
    const el = h('p', { title: EVIL, class: 'a', hidden: true, skip: false }, EVIL, raw('<b>ok</b>'), 3, null);
    expect(el.html).toBe(`<p title="${escapeHtml(EVIL)}" class="a" hidden>${escapeHtml(EVIL)}<b>ok</b>3</p>`);
    expect(render(['a', ['b', raw('<i>c</i>')]])).toBe('ab<i>c</i>');
    expect(() => h('p onclick', {})).toThrow(/bad tag name/);
    expect(() => h('p', { 'on click': 'x' })).toThrow(/bad attribute name/);
  });

  it('builds a self-contained page: sections with anchors, a table, no scripts or external resources', () => {
    const doc = page({
      title: EVIL,
      subtitle: 'mmulab x --y',
      meta: [['seed', '1']],
      sections: [
        { title: 'One', intro: EVIL, content: [figure(barChart({ categories: ['a'], y: {}, series: [{ name: EVIL, values: [1] }] }), 'cap'), callout('ok', 'fine')] },
        { title: 'One', content: table([{ label: 'name', value: (r: { n: string; v: number }) => r.n }, { label: 'v', value: (r) => r.v, numeric: true }], [{ n: EVIL, v: 2 }]) },
      ],
    });
    expect(doc.startsWith('<!doctype html>')).toBe(true);
    expect(doc).not.toContain('<script');
    expect(doc).not.toMatch(/<link|@import|url\(|src=/i);
    expect(doc).toContain(`<title>${escapeHtml(EVIL)}</title>`);
    expect(doc).toContain('<section id="one">');
    expect(doc).toContain('<section id="one-x">'); // unique anchors
    expect(doc).toContain('<td class="num">2</td>');
    expect(doc).toContain('<svg ');
  });
});

describe('svg', () => {
  it('nice ticks cover the data range; quantiles interpolate; numbers are compact', () => {
    expect(niceTicks(0, 224, 5)).toEqual([0, 50, 100, 150, 200, 250]);
    expect(niceTicks(1.3, 9.2, 5)).toEqual([0, 2, 4, 6, 8, 10]);
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([5], 0.95)).toBe(5);
    expect(formatNumber(12_345)).toBe('12.3k');
    expect(formatNumber(2_500_000)).toBe('2.5M');
    expect(formatNumber(0.05)).toBe('0.05');
  });

  it('a line chart: one path per series, escaped names in the legend, a gap where a value is missing', () => {
    const svg = lineChart({
      title: 'T <1>',
      x: { label: 'pages', scale: 'log', base: 2 },
      y: { label: 'µs', scale: 'log' },
      series: [
        { name: 'a&b', points: [{ x: 1, y: 2 }, { x: 8, y: 3 }, { x: 64, y: null }, { x: 512, y: 50 }] },
        { name: 'c', points: [{ x: 1, y: 0.3 }, { x: 512, y: 4 }] },
      ],
    });
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg).toContain('T &lt;1&gt;');
    expect(svg).toContain('a&amp;b');
    const paths = [...svg.matchAll(/<path d="([^"]+)" fill="none"/g)].map((m) => m[1]!);
    expect(paths).toHaveLength(2);
    // The missing value starts a new sub-path (a gap): two M commands in the first series.
    expect(paths[0]!.match(/M/g)).toHaveLength(2);
    expect(svg.match(/<circle /g)).toHaveLength(5);
    // Exactly the x values of a small sweep label the axis, 1 to 512 on a log scale.
    for (const x of ['1', '8', '64', '512']) expect(svg).toContain(`text-anchor="middle">${x}</text>`);
  });

  it('a bar chart: one bar per non-null value, heights proportional to the values', () => {
    const svg = barChart({ categories: ['x', 'y'], y: { label: 'n' }, series: [{ name: 's1', values: [10, null] }, { name: 's2', values: [20, 5] }] });
    // Bars carry a tooltip; the legend's swatches do not.
    const heights = [...svg.matchAll(/<rect x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)" fill="[^"]+"><title>/g)].map((m) => Number(m[1]));
    expect(heights).toHaveLength(3);
    expect(heights[1]! / heights[0]!).toBeCloseTo(2, 1);
    expect(heights[2]! / heights[0]!).toBeCloseTo(0.5, 1);
  });

  it('a box chart: median line and whiskers where the statistics put them; empty data says so', () => {
    const values = Array.from({ length: 101 }, (_, i) => i); // 0..100
    const svg = boxChart({ y: { label: 'v', min: 0, max: 100 }, boxes: [{ label: 'b', values }] });
    expect(svg).toContain('n=101, median 50, p25 25, p75 75, p95 95, min 0, max 100');
    expect(svg).toContain('whiskers: p5–p95');
    expect(boxChart({ y: {}, boxes: [] })).toContain('no data');
    expect(lineChart({ x: {}, y: {}, series: [] })).toContain('no data');
  });
});
