/**
 * src/report/svg.ts — self-contained SVG charts for mmulab's HTML reports: a line chart, a
 * grouped bar chart and a box/percentile chart, each with axes, tick labels, axis titles and a
 * legend. Pure functions from data to an `<svg>` string: no DOM, no network, no external fonts
 * or scripts (text uses the reader's system sans-serif font), so a report is one file that opens
 * anywhere. Every string from the data is XML-escaped.
 *
 *   lineChart({ title, x: { label, scale: 'log' }, y: { label }, series: [{ name, points }] })
 *   barChart({ title, categories: ['2 CPUs', '4 CPUs'], y: { label }, series: [{ name, values }] })
 *   boxChart({ title, y: { label }, boxes: [{ label, values }] })
 *
 * Charts size themselves to `width` × `height` (default 640 × 360) and scale with the page
 * (viewBox, width 100%). Colours come from the Okabe–Ito palette (distinguishable with the
 * common colour-vision deficiencies); a series may set its own. Missing values (null, NaN)
 * leave gaps. Used by `mmulab shootdown --html` and meant for any other report (`mmulab ab`).
 */

/** Okabe–Ito colours, then greys. */
export const PALETTE: readonly string[] = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#D55E00', '#56B4E9', '#F0E442', '#000000', '#777777'];

export interface AxisOptions {
  /** Axis title, shown along the axis. */
  label?: string;
  /** 'log' needs positive values (base 10 ticks; base 2 with `base: 2`). Default 'linear'. */
  scale?: 'linear' | 'log';
  base?: 2 | 10;
  /** Force the range (otherwise from the data; linear axes include 0 unless `zero: false`). */
  min?: number;
  max?: number;
  zero?: boolean;
  /** Tick label format (default: compact number). */
  format?: (v: number) => string;
}

export interface ChartFrame {
  title?: string;
  width?: number;
  height?: number;
  /** Text under the chart (e.g. what the whiskers mean). */
  note?: string;
}

export interface LinePoint {
  x: number;
  y: number | null;
}

export interface LineSeries {
  name: string;
  points: readonly LinePoint[];
  color?: string;
  dashed?: boolean;
}

export interface LineChartSpec extends ChartFrame {
  x: AxisOptions;
  y: AxisOptions;
  series: readonly LineSeries[];
}

export interface BarSeries {
  name: string;
  /** One value per category (null: no bar). */
  values: readonly (number | null)[];
  color?: string;
}

export interface BarChartSpec extends ChartFrame {
  categories: readonly string[];
  /** Title under the categories. */
  xLabel?: string;
  y: AxisOptions;
  series: readonly BarSeries[];
}

export interface BoxData {
  label: string;
  values: readonly number[];
  color?: string;
}

export interface BoxChartSpec extends ChartFrame {
  xLabel?: string;
  y: AxisOptions;
  boxes: readonly BoxData[];
}

/** Escape text for XML/HTML content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A compact number: 1.5k, 2.3M, 0.25, 12. */
export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1e9) return `${trim(v / 1e9)}G`;
  if (a >= 1e6) return `${trim(v / 1e6)}M`;
  if (a >= 1e4) return `${trim(v / 1e3)}k`;
  if (a >= 100 || a === 0) return String(Math.round(v));
  if (a >= 1) return trim(v);
  return String(Number(v.toPrecision(2)));
}

function trim(v: number): string {
  return String(Number(v.toFixed(Math.abs(v) >= 10 ? 1 : 2)));
}

/** The q-quantile (0..1) of ascending `sorted` by linear interpolation between order statistics. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * Math.min(1, Math.max(0, q));
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** "Nice" tick values from at or below `min` to at or above `max` (about `count` steps). */
export function niceTicks(min: number, max: number, count = 5): number[] {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (min === max) return [min];
  const span = max - min;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) ?? 10 * mag;
  const out: number[] = [];
  const first = Math.floor(min / step + 1e-9) * step;
  const last = Math.ceil(max / step - 1e-9) * step;
  for (let i = 0; first + i * step <= last + step * 1e-9; i++) out.push(Number((first + i * step).toPrecision(12)));
  return out;
}

interface Scale {
  (v: number): number;
  ticks: number[];
  lo: number;
  hi: number;
}

function makeScale(values: number[], opts: AxisOptions, from: number, to: number): Scale {
  const log = opts.scale === 'log';
  let vals = values.filter((v) => Number.isFinite(v) && (!log || v > 0));
  if (vals.length === 0) vals = log ? [1, 10] : [0, 1];
  // reduce, not Math.min(...vals): a spread of a very long series overflows the stack.
  let lo = opts.min ?? vals.reduce((a, b) => Math.min(a, b), Infinity);
  let hi = opts.max ?? vals.reduce((a, b) => Math.max(a, b), -Infinity);
  if (!log && opts.zero !== false && opts.min === undefined) lo = Math.min(0, lo);
  if (!log && opts.zero !== false && opts.max === undefined) hi = Math.max(0, hi);
  if (log) {
    const base = opts.base ?? 10;
    const lb = Math.floor(Math.log(lo) / Math.log(base) + 1e-9);
    const hb = Math.ceil(Math.log(hi) / Math.log(base) - 1e-9);
    lo = opts.min ?? base ** lb;
    hi = opts.max ?? base ** Math.max(hb, lb + 1);
    const ticks: number[] = [];
    for (let e = Math.ceil(Math.log(lo) / Math.log(base) - 1e-9); base ** e <= hi * (1 + 1e-9); e++) ticks.push(base ** e);
    const l0 = Math.log(lo);
    const l1 = Math.log(hi);
    const f = ((v: number) => from + ((Math.log(Math.max(v, lo * 1e-6)) - l0) / (l1 - l0)) * (to - from)) as Scale;
    f.ticks = thin(ticks, 9);
    f.lo = lo;
    f.hi = hi;
    return f;
  }
  if (lo === hi) {
    hi = lo + 1;
  }
  const ticks = niceTicks(lo, hi, 5);
  if (opts.max === undefined) hi = ticks[ticks.length - 1] ?? hi;
  if (opts.min === undefined) lo = ticks[0] ?? lo;
  const f = ((v: number) => from + ((v - lo) / (hi - lo)) * (to - from)) as Scale;
  f.ticks = ticks.filter((t) => t >= lo - 1e-9 && t <= hi + 1e-9);
  f.lo = lo;
  f.hi = hi;
  return f;
}

function thin(ticks: number[], max: number): number[] {
  if (ticks.length <= max) return ticks;
  const step = Math.ceil(ticks.length / max);
  return ticks.filter((_, i) => i % step === 0);
}

const FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"';

function fmt(n: number): string {
  return Number.isFinite(n) ? String(Math.round(n * 100) / 100) : '0';
}

interface Layout {
  w: number;
  h: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

function layout(frame: ChartFrame, legendRows: number, extraBottom = 0): Layout {
  const w = frame.width ?? 640;
  const h = frame.height ?? 360;
  const top = (frame.title ? 34 : 14) + legendRows * 18;
  return { w, h, left: 64, right: w - 16, top, bottom: h - 46 - extraBottom - (frame.note ? 18 : 0) };
}

function open(l: Layout, frame: ChartFrame, kind: string): string {
  const label = frame.title ? ` aria-label="${escapeXml(frame.title)}"` : '';
  let s = `<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-${kind}" viewBox="0 0 ${l.w} ${l.h}" width="100%" style="max-width:${l.w}px" role="img"${label} ${FONT} font-size="12">`;
  if (frame.title) s += `<title>${escapeXml(frame.title)}</title><text x="${l.w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="600">${escapeXml(frame.title)}</text>`;
  return s;
}

function close(l: Layout, frame: ChartFrame): string {
  const note = frame.note ? `<text x="${l.left}" y="${l.h - 6}" font-size="11" fill="#555">${escapeXml(frame.note)}</text>` : '';
  return `${note}</svg>`;
}

/** A legend in rows above the plot; returns the markup. */
function legend(items: { name: string; color: string; dashed?: boolean; kind: 'line' | 'box' }[], l: Layout, y0: number): string {
  let s = '';
  let x = l.left;
  let y = y0;
  for (const it of items) {
    const width = 26 + it.name.length * 6.6 + 14;
    if (x + width > l.right && x > l.left) {
      x = l.left;
      y += 18;
    }
    if (it.kind === 'line') s += `<line x1="${x}" y1="${y - 4}" x2="${x + 20}" y2="${y - 4}" stroke="${it.color}" stroke-width="2.5"${it.dashed ? ' stroke-dasharray="5 3"' : ''}/>`;
    else s += `<rect x="${x + 4}" y="${y - 10}" width="12" height="12" fill="${it.color}"/>`;
    s += `<text x="${x + 26}" y="${y}">${escapeXml(it.name)}</text>`;
    x += width;
  }
  return s;
}

function legendRows(names: string[], l: { w: number }): number {
  let rows = 1;
  let x = 64;
  for (const n of names) {
    const width = 26 + n.length * 6.6 + 14;
    if (x + width > l.w - 16 && x > 64) {
      rows++;
      x = 64;
    }
    x += width;
  }
  return names.length ? rows : 0;
}

function yAxis(l: Layout, ys: Scale, opts: AxisOptions): string {
  const f = opts.format ?? formatNumber;
  let s = '';
  for (const t of ys.ticks) {
    const y = ys(t);
    s += `<line x1="${l.left}" y1="${fmt(y)}" x2="${l.right}" y2="${fmt(y)}" stroke="#e4e4e4"/>`;
    s += `<text x="${l.left - 6}" y="${fmt(y + 4)}" text-anchor="end">${escapeXml(f(t))}</text>`;
  }
  s += `<line x1="${l.left}" y1="${l.top}" x2="${l.left}" y2="${l.bottom}" stroke="#333"/>`;
  if (opts.label) s += `<text transform="translate(14 ${fmt((l.top + l.bottom) / 2)}) rotate(-90)" text-anchor="middle">${escapeXml(opts.label)}</text>`;
  return s;
}

function xTitle(l: Layout, label: string | undefined): string {
  return label ? `<text x="${fmt((l.left + l.right) / 2)}" y="${l.bottom + 36}" text-anchor="middle">${escapeXml(label)}</text>` : '';
}

function colorOf(i: number, given?: string): string {
  return given ?? PALETTE[i % PALETTE.length]!;
}

function empty(l: Layout, frame: ChartFrame, kind: string): string {
  return `${open(l, frame, kind)}<text x="${l.w / 2}" y="${l.h / 2}" text-anchor="middle" fill="#777">no data</text>${close(l, frame)}`;
}

/** A line chart: one polyline with point markers per series, sorted by x. */
export function lineChart(spec: LineChartSpec): string {
  const names = spec.series.map((s) => s.name);
  const l = layout(spec, legendRows(names, { w: spec.width ?? 640 }));
  const xs = spec.series.flatMap((s) => s.points.map((p) => p.x));
  const yv = spec.series.flatMap((s) => s.points.map((p) => p.y).filter((v): v is number => v !== null && Number.isFinite(v)));
  if (xs.length === 0) return empty(l, spec, 'line');
  const xScale = makeScale(xs, { zero: false, ...spec.x }, l.left + 8, l.right - 8);
  const yScale = makeScale(yv, spec.y, l.bottom, l.top);
  let s = open(l, spec, 'line');
  s += legend(spec.series.map((x, i) => ({ name: x.name, color: colorOf(i, x.color), dashed: x.dashed, kind: 'line' as const })), l, (spec.title ? 34 : 14) + 10);
  s += yAxis(l, yScale, spec.y);
  const xf = spec.x.format ?? formatNumber;
  // Few distinct x values (a sweep): label exactly those.
  const distinct = [...new Set(xs)].sort((a, b) => a - b);
  const xticks = distinct.length <= 10 ? distinct.filter((x) => spec.x.scale !== 'log' || x > 0) : xScale.ticks;
  for (const t of xticks) {
    const x = xScale(t);
    s += `<line x1="${fmt(x)}" y1="${l.bottom}" x2="${fmt(x)}" y2="${l.bottom + 5}" stroke="#333"/><text x="${fmt(x)}" y="${l.bottom + 18}" text-anchor="middle">${escapeXml(xf(t))}</text>`;
  }
  s += `<line x1="${l.left}" y1="${l.bottom}" x2="${l.right}" y2="${l.bottom}" stroke="#333"/>`;
  s += xTitle(l, spec.x.label);
  spec.series.forEach((ser, i) => {
    const c = colorOf(i, ser.color);
    const pts = ser.points.filter((p) => Number.isFinite(p.x)).slice().sort((a, b) => a.x - b.x);
    let d = '';
    let pen = false;
    for (const p of pts) {
      if (p.y === null || !Number.isFinite(p.y) || (spec.y.scale === 'log' && p.y <= 0)) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${fmt(xScale(p.x))} ${fmt(yScale(p.y))}`;
      pen = true;
    }
    s += `<g class="series" data-name="${escapeXml(ser.name)}">`;
    if (d) s += `<path d="${d}" fill="none" stroke="${c}" stroke-width="2"${ser.dashed ? ' stroke-dasharray="5 3"' : ''}/>`;
    for (const p of pts) {
      if (p.y === null || !Number.isFinite(p.y) || (spec.y.scale === 'log' && p.y <= 0)) continue;
      s += `<circle cx="${fmt(xScale(p.x))}" cy="${fmt(yScale(p.y))}" r="3" fill="${c}"><title>${escapeXml(`${ser.name}: ${xf(p.x)} → ${(spec.y.format ?? formatNumber)(p.y)}`)}</title></circle>`;
    }
    s += '</g>';
  });
  return s + close(l, spec);
}

/** A grouped bar chart: one group per category, one bar per series. */
export function barChart(spec: BarChartSpec): string {
  const names = spec.series.map((s) => s.name);
  const l = layout(spec, legendRows(names, { w: spec.width ?? 640 }));
  const vals = spec.series.flatMap((s) => s.values.filter((v): v is number => v !== null && Number.isFinite(v)));
  if (spec.categories.length === 0 || spec.series.length === 0) return empty(l, spec, 'bar');
  const yScale = makeScale(vals, spec.y, l.bottom, l.top);
  let s = open(l, spec, 'bar');
  s += legend(spec.series.map((x, i) => ({ name: x.name, color: colorOf(i, x.color), kind: 'box' as const })), l, (spec.title ? 34 : 14) + 10);
  s += yAxis(l, yScale, spec.y);
  const groupW = (l.right - l.left) / spec.categories.length;
  const barW = Math.max(2, (groupW * 0.8) / spec.series.length);
  const base = yScale(spec.y.scale === 'log' ? yScale.lo : Math.max(yScale.lo, 0));
  const f = spec.y.format ?? formatNumber;
  spec.categories.forEach((cat, ci) => {
    const gx = l.left + ci * groupW;
    s += `<text x="${fmt(gx + groupW / 2)}" y="${l.bottom + 18}" text-anchor="middle">${escapeXml(cat)}</text>`;
    spec.series.forEach((ser, si) => {
      const v = ser.values[ci];
      if (v === null || v === undefined || !Number.isFinite(v) || (spec.y.scale === 'log' && v <= 0)) return;
      const x = gx + groupW * 0.1 + si * barW;
      const y = yScale(v);
      s += `<rect x="${fmt(x)}" y="${fmt(Math.min(y, base))}" width="${fmt(barW - 1)}" height="${fmt(Math.abs(base - y))}" fill="${colorOf(si, ser.color)}"><title>${escapeXml(`${ser.name}, ${cat}: ${f(v)}`)}</title></rect>`;
    });
  });
  s += `<line x1="${l.left}" y1="${l.bottom}" x2="${l.right}" y2="${l.bottom}" stroke="#333"/>`;
  s += xTitle(l, spec.xLabel);
  return s + close(l, spec);
}

/**
 * A box chart: per box, whiskers from the 5th to the 95th percentile, a box from the 25th to the
 * 75th, a line at the median, a diamond at the mean and dots at the minimum and maximum.
 */
export function boxChart(spec: BoxChartSpec): string {
  const frame: BoxChartSpec = { note: 'box: p25–p75, line: median, ◆ mean, whiskers: p5–p95, dots: min and max', ...spec };
  const l = layout(frame, 0);
  const all = spec.boxes.flatMap((b) => b.values.filter((v) => Number.isFinite(v)));
  if (spec.boxes.length === 0 || all.length === 0) return empty(l, frame, 'box');
  const yScale = makeScale(all, spec.y, l.bottom, l.top);
  let s = open(l, frame, 'box');
  s += yAxis(l, yScale, spec.y);
  const f = spec.y.format ?? formatNumber;
  const slot = (l.right - l.left) / spec.boxes.length;
  const bw = Math.min(48, slot * 0.5);
  spec.boxes.forEach((b, i) => {
    const cx = l.left + slot * (i + 0.5);
    const c = colorOf(i, b.color);
    s += `<text x="${fmt(cx)}" y="${l.bottom + 18}" text-anchor="middle">${escapeXml(b.label)}</text>`;
    const v = b.values.filter((x) => Number.isFinite(x) && (spec.y.scale !== 'log' || x > 0)).slice().sort((a, z) => a - z);
    if (v.length === 0) return;
    const [p5, p25, p50, p75, p95] = [0.05, 0.25, 0.5, 0.75, 0.95].map((q) => yScale(quantile(v, q))) as [number, number, number, number, number];
    const mean = v.reduce((a, x) => a + x, 0) / v.length;
    const tip = `${b.label}: n=${v.length}, median ${f(quantile(v, 0.5))}, p25 ${f(quantile(v, 0.25))}, p75 ${f(quantile(v, 0.75))}, p95 ${f(quantile(v, 0.95))}, min ${f(v[0]!)}, max ${f(v[v.length - 1]!)}`;
    s += `<g class="box" data-label="${escapeXml(b.label)}"><title>${escapeXml(tip)}</title>`;
    s += `<line x1="${fmt(cx)}" y1="${fmt(p5)}" x2="${fmt(cx)}" y2="${fmt(p25)}" stroke="${c}"/><line x1="${fmt(cx)}" y1="${fmt(p75)}" x2="${fmt(cx)}" y2="${fmt(p95)}" stroke="${c}"/>`;
    s += `<line x1="${fmt(cx - bw / 4)}" y1="${fmt(p5)}" x2="${fmt(cx + bw / 4)}" y2="${fmt(p5)}" stroke="${c}"/><line x1="${fmt(cx - bw / 4)}" y1="${fmt(p95)}" x2="${fmt(cx + bw / 4)}" y2="${fmt(p95)}" stroke="${c}"/>`;
    s += `<rect x="${fmt(cx - bw / 2)}" y="${fmt(Math.min(p75, p25))}" width="${fmt(bw)}" height="${fmt(Math.max(1, Math.abs(p25 - p75)))}" fill="${c}" fill-opacity="0.25" stroke="${c}"/>`;
    s += `<line x1="${fmt(cx - bw / 2)}" y1="${fmt(p50)}" x2="${fmt(cx + bw / 2)}" y2="${fmt(p50)}" stroke="${c}" stroke-width="2.5"/>`;
    const my = yScale(mean);
    s += `<path d="M${fmt(cx)} ${fmt(my - 4)}L${fmt(cx + 4)} ${fmt(my)}L${fmt(cx)} ${fmt(my + 4)}L${fmt(cx - 4)} ${fmt(my)}Z" fill="${c}"/>`;
    s += `<circle cx="${fmt(cx)}" cy="${fmt(yScale(v[0]!))}" r="2" fill="${c}"/><circle cx="${fmt(cx)}" cy="${fmt(yScale(v[v.length - 1]!))}" r="2" fill="${c}"/>`;
    s += '</g>';
  });
  s += `<line x1="${l.left}" y1="${l.bottom}" x2="${l.right}" y2="${l.bottom}" stroke="#333"/>`;
  s += xTitle(l, spec.xLabel);
  return s + close(l, frame);
}
