/**
 * src/report/html.ts — self-contained HTML reports: one file with inline CSS and inline SVG
 * charts (src/report/svg.ts), no scripts, no web fonts, no network, readable offline and
 * printable. Used by `mmulab shootdown --html`; meant for every command that writes a report.
 *
 * Text from data is always escaped. Markup is built with `h()` (element with escaped attributes
 * and children) or marked trusted with `raw()` (e.g. an SVG string from svg.ts); plain strings
 * passed as content are escaped.
 *
 *   page({
 *     title: 'TLB shootdown',
 *     subtitle: 'mmulab shootdown --cpus-list 2,4',
 *     meta: [['seed', '1'], ['clock', '3 GHz']],
 *     sections: [
 *       { title: 'Latency', intro: 'Initiator latency…', content: [figure(lineChart({...}), 'caption')] },
 *       { title: 'All points', content: table(columns, rows) },
 *     ],
 *   })  // → '<!doctype html>…'
 */

import { escapeXml } from './svg.ts';

/** Escape text for HTML content and attribute values. */
export function escapeHtml(s: string): string {
  return escapeXml(s);
}

/** Trusted markup (not escaped again). */
export class Html {
  constructor(readonly html: string) {}
  toString(): string {
    return this.html;
  }
}

/** Mark `markup` as trusted HTML/SVG. Never pass text from data here. */
export function raw(markup: string): Html {
  return new Html(markup);
}

/** Content: text (escaped), trusted markup, numbers, nothing, or a list of them. */
export type Content = string | number | Html | null | undefined | false | readonly Content[];

export function render(c: Content): string {
  if (c === null || c === undefined || c === false) return '';
  if (c instanceof Html) return c.html;
  if (typeof c === 'number') return escapeHtml(String(c));
  if (typeof c === 'string') return escapeHtml(c);
  return c.map(render).join('');
}

const VOID = new Set(['br', 'hr', 'img', 'meta', 'col', 'wbr']);

/** An element: `h('p', { class: 'note' }, 'text', h('b', {}, 'bold'))`. Attribute values are escaped. */
export function h(tag: string, attrs: Record<string, string | number | boolean | null | undefined> = {}, ...children: Content[]): Html {
  if (!/^[a-z][a-z0-9-]*$/.test(tag)) throw new Error(`bad tag name "${tag}"`);
  let a = '';
  for (const [k, v] of Object.entries(attrs)) {
    if (!/^[a-zA-Z_:][-a-zA-Z0-9_:.]*$/.test(k)) throw new Error(`bad attribute name "${k}"`);
    if (v === false || v === null || v === undefined) continue;
    a += v === true ? ` ${k}` : ` ${k}="${escapeHtml(String(v))}"`;
  }
  return raw(VOID.has(tag) ? `<${tag}${a}>` : `<${tag}${a}>${render(children)}</${tag}>`);
}

/** A chart (an SVG string from svg.ts) with an optional caption. */
export function figure(svg: string, caption?: string): Html {
  return h('figure', {}, raw(svg), caption ? h('figcaption', {}, caption) : null);
}

/** Several figures side by side where the page is wide enough. */
export function grid(...items: Content[]): Html {
  return h('div', { class: 'grid' }, ...items);
}

export interface Column<T> {
  /** Header text. */
  label: string;
  /** Cell content for a row (text is escaped). */
  value: (row: T) => Content;
  /** Right-align (numbers). */
  numeric?: boolean;
  /** Tooltip on the header. */
  title?: string;
}

/** A table with a header row; numeric columns are right-aligned. */
export function table<T>(columns: readonly Column<T>[], rows: readonly T[], opts: { caption?: string; className?: string } = {}): Html {
  const head = h('tr', {}, ...columns.map((c) => h('th', { class: c.numeric ? 'num' : null, title: c.title }, c.label)));
  const body = rows.map((r) => h('tr', {}, ...columns.map((c) => h('td', { class: c.numeric ? 'num' : null }, c.value(r)))));
  return h('div', { class: 'table-wrap' }, h('table', { class: opts.className }, opts.caption ? h('caption', {}, opts.caption) : null, h('thead', {}, head), h('tbody', {}, ...body)));
}

/** A definition list of label/value pairs. */
export function keyValues(pairs: readonly (readonly [string, Content])[]): Html {
  return h('dl', { class: 'kv' }, ...pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** A highlighted note: 'ok', 'warn' or 'bad'. */
export function callout(kind: 'ok' | 'warn' | 'bad' | 'info', content: Content): Html {
  return h('div', { class: `callout ${kind}` }, content);
}

export interface Section {
  title: string;
  /** Anchor id (default from the title). */
  id?: string;
  /** A paragraph of text above the content. */
  intro?: string;
  content: Content;
}

export interface PageOptions {
  title: string;
  subtitle?: string;
  /** Label/value pairs shown under the title (parameters of the run). */
  meta?: readonly (readonly [string, Content])[];
  sections: readonly Section[];
  /** Text in the footer (default: how the page was made). */
  footer?: string;
}

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0; color: #1d1d1f; background: #fff; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; padding-top: 8px; border-top: 1px solid #e5e5e5; }
.subtitle { color: #555; margin: 0 0 12px; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85rem; }
nav { font-size: 0.9rem; margin: 8px 0 16px; }
nav a { margin-right: 14px; color: #0060a0; text-decoration: none; }
figure { margin: 12px 0; }
figcaption { color: #555; font-size: 0.85rem; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 12px 24px; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 8px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { background: #f5f5f7; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: #555; padding: 4px 0; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.88rem; margin: 8px 0; }
dl.kv dt { color: #555; }
dl.kv dd { margin: 0; }
.callout { padding: 8px 12px; border-left: 4px solid; margin: 8px 0; border-radius: 2px; }
.callout.ok { border-color: #009E73; background: #eef8f4; }
.callout.warn { border-color: #E69F00; background: #fdf6e9; }
.callout.bad { border-color: #D55E00; background: #fbeee6; }
.callout.info { border-color: #0072B2; background: #edf4fa; }
footer { color: #777; font-size: 0.8rem; margin-top: 40px; }
.verdict.bad { color: #D55E00; font-weight: 600; }
.verdict.ok { color: #009E73; }
.verdict.na { color: #777; }
@media print { nav { display: none; } h2 { break-before: auto; } figure, table { break-inside: avoid; } }
`;

function slug(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || 'section';
}

/** A complete HTML document. */
export function page(opts: PageOptions): string {
  const ids = new Set<string>();
  const sections = opts.sections.map((s) => {
    let id = s.id ?? slug(s.title);
    while (ids.has(id)) id += '-x';
    ids.add(id);
    return { ...s, id };
  });
  const nav = sections.length > 1 ? h('nav', {}, ...sections.map((s) => h('a', { href: `#${s.id}` }, s.title))) : null;
  const body = h(
    'main',
    {},
    h('h1', {}, opts.title),
    opts.subtitle ? h('p', { class: 'subtitle' }, opts.subtitle) : null,
    opts.meta && opts.meta.length ? keyValues(opts.meta) : null,
    nav,
    ...sections.map((s) => h('section', { id: s.id }, h('h2', {}, s.title), s.intro ? h('p', {}, s.intro) : null, s.content)),
    h('footer', {}, opts.footer ?? 'Made by mmulab. Self-contained: inline SVG charts, no scripts, no network.'),
  );
  return `<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>${escapeHtml(opts.title)}</title>\n<style>${CSS}</style>\n</head>\n<body>\n${body.html}\n</body>\n</html>\n`;
}
