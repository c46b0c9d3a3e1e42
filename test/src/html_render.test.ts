/**
 * The HTML reports rendered in headless Chromium: `mmulab ab --html` and `mmulab shootdown
 * --html` are loaded from disk (no network), screenshotted, and the screenshot is checked for
 * the charts — it must be a real PNG of the requested size with enough distinct colours that
 * the chart palette is on it, not a blank page. The DOM Chromium built (--dump-dom) must hold
 * the SVG charts. Debian's `chromium` package is installed by .ci/run; on a machine without it
 * the test fails and says so, rather than passing without having looked.
 */

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.ts';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome', '/usr/bin/google-chrome-stable'];
const chromium = process.env.CHROMIUM ?? CANDIDATES.find((p) => existsSync(p));

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

/** Width, height and the RGB(A) pixels of a PNG (8-bit, colour type 2 or 6, no interlace). */
function decodePng(buf: Buffer): { width: number; height: number; pixels: Uint8Array; channels: number } {
  expect(buf.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
  let off = 8;
  let width = 0, height = 0, colorType = 0;
  const idat: Buffer[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('ascii', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      expect(data[8]).toBe(8);
      colorType = data[9]!;
      expect(data[12]).toBe(0);
    } else if (type === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const channels = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  expect(channels).toBeGreaterThan(0);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = new Uint8Array(width * height * channels);
  const prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const out = pixels.subarray(y * stride, (y + 1) * stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[x - channels]! : 0;
      const b = y > 0 ? prev[x]! : 0;
      const c = x >= channels && y > 0 ? prev[x - channels]! : 0;
      let v = line[x]!;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[x] = v & 0xff;
    }
    prev.set(out);
  }
  return { width, height, pixels, channels };
}

function render(html: string, dir: string, name: string) {
  const png = join(dir, `${name}.png`);
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--no-first-run', '--disable-dev-shm-usage', `--user-data-dir=${join(dir, 'profile-' + name)}`];
  execFileSync(chromium!, [...flags, `--screenshot=${png}`, '--window-size=1200,2400', `file://${html}`], { stdio: 'pipe', timeout: 120_000 });
  const dom = execFileSync(chromium!, [...flags, '--dump-dom', `file://${html}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000, maxBuffer: 64 << 20 });
  return { png: decodePng(readFileSync(png)), dom };
}

/** Distinct colours (quantised) and the share of non-white pixels. */
function paint(img: ReturnType<typeof decodePng>) {
  const colours = new Set<number>();
  let ink = 0;
  const n = img.width * img.height;
  for (let i = 0; i < n; i++) {
    const r = img.pixels[i * img.channels]!, g = img.pixels[i * img.channels + 1]!, b = img.pixels[i * img.channels + 2]!;
    colours.add(((r >> 4) << 8) | ((g >> 4) << 4) | (b >> 4));
    if (r < 240 || g < 240 || b < 240) ink++;
  }
  return { colours: colours.size, ink: ink / n };
}

/** The chart palette's blue (#0072B2) and orange (#E69F00) appear on the screenshot. */
function hasPaletteColour(img: ReturnType<typeof decodePng>, [R, G, B]: [number, number, number]): boolean {
  const n = img.width * img.height;
  for (let i = 0; i < n; i++) {
    const r = img.pixels[i * img.channels]!, g = img.pixels[i * img.channels + 1]!, b = img.pixels[i * img.channels + 2]!;
    if (Math.abs(r - R) < 12 && Math.abs(g - G) < 12 && Math.abs(b - B) < 12) return true;
  }
  return false;
}

describe('HTML reports in headless Chromium', () => {
  it('finds Chromium (installed by .ci/run; set CHROMIUM=/path to use another)', () => {
    expect(chromium, `no Chromium found at ${CANDIDATES.join(', ')}: install Debian's chromium package (apt-get install chromium) or set CHROMIUM`).toBeTruthy();
  });

  it.runIf(!!chromium)('renders the ab report with its charts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-html-'));
    const html = join(dir, 'ab.html');
    const r = await run(['ab', '--design', 'eager,fault', '--workload', 'pressure', '--seeds', '2', '--iterations', '20', '--cpus', '2', '--jobs', '1', '--html', html]);
    expect(r.code).toBe(0);
    const { png, dom } = render(html, dir, 'ab');
    expect(png.width).toBe(1200);
    expect(png.height).toBe(2400);
    expect((dom.match(/<svg/g) ?? []).length).toBeGreaterThanOrEqual(4);
    expect(dom).toContain('Round-trip latency');
    const p = paint(png);
    expect(p.ink).toBeGreaterThan(0.02);
    expect(p.colours).toBeGreaterThan(20);
    expect(hasPaletteColour(png, [0x00, 0x72, 0xb2])).toBe(true);
    expect(hasPaletteColour(png, [0xe6, 0x9f, 0x00])).toBe(true);
  }, 300_000);

  it.runIf(!!chromium)('renders the shootdown report with its charts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-html-'));
    const html = join(dir, 'shootdown.html');
    const r = await run(['shootdown', '--cpus-list', '2,4', '--pages', '1,64', '--jobs', '1', '--html', html]);
    expect(r.code, r.err).toBe(0);
    const { png, dom } = render(html, dir, 'shootdown');
    expect((dom.match(/<svg/g) ?? []).length).toBeGreaterThanOrEqual(2);
    const p = paint(png);
    expect(p.ink).toBeGreaterThan(0.02);
    expect(hasPaletteColour(png, [0x00, 0x72, 0xb2])).toBe(true);
  }, 300_000);
});
