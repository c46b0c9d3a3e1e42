/**
 * src/report/ab_html.ts — the HTML report of `mmulab ab`.
 */

import type { AbResult } from '../experiments/ab.ts';

export function abHtml(r: AbResult): string {
  return `<!doctype html><meta charset="utf-8"><title>mmulab ab</title><pre>${JSON.stringify(r.summary, null, 1).replace(/&/g, '&amp;').replace(/</g, '&lt;')}</pre>`;
}
