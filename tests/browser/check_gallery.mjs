// Drive Debian's headless Chromium over a static render of a SampleGallery's saved widget state.
// Called by tests/test_gallery_browser.py:
//   node check_gallery.mjs URL OUT_DIR [CHROMIUM]
// Opens URL (served on localhost), waits for the widgets to render, reads the displayed picture,
// presses ArrowRight on the slider handle, reads it again, clicks the mask toggle, reads it again,
// takes screenshots into OUT_DIR, and prints one JSON object on stdout. Every request that does not
// go to the page's own origin is aborted and listed in `blocked` (the test asserts there is none:
// no CDN). playwright-core never downloads a browser: it drives the Chromium at CHROMIUM.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, outDir, executablePath = '/usr/bin/chromium'] = process.argv.slice(2);
if (!url || !outDir) {
  console.error('usage: node check_gallery.mjs URL OUT_DIR [CHROMIUM]');
  process.exit(2);
}
const origin = new URL(url).origin;
const TIMEOUT = 20000;

// The picture shown: the one <img> in the DOM of the gallery's stacks (a Stack renders only its
// selected child). Returns its PNG bytes (base64, fetched from its blob: URL) and decoded pixels.
async function shown(page) {
  return page.evaluate(async () => {
    const imgs = Array.from(document.querySelectorAll('img.widget-image'));
    const visible = imgs.filter((im) => im.offsetParent !== null);
    if (visible.length !== 1) throw new Error(`expected one visible image, found ${visible.length} of ${imgs.length}`);
    const img = visible[0];
    await img.decode();
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0;
    for (let i = 0; i < px.length; i += 4) sum += px[i] + px[i + 1] + px[i + 2];
    const r = img.getBoundingClientRect();
    return {
      src: img.src,
      png_base64: btoa(bin),
      natural: [img.naturalWidth, img.naturalHeight],
      rendered: [Math.round(r.width), Math.round(r.height)],
      mean_rgb: sum / (px.length / 4) / 3,
      pixels_base64: btoa(Array.from(px, (v) => String.fromCharCode(v)).join('')),
      readout: (document.querySelector('.widget-readout') || {}).textContent || null,
    };
  });
}

const userDataDir = mkdtempSync(join(tmpdir(), 'medkit-chromium-'));
const blocked = [];
const requests = [];
const errors = [];
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  await context.route('**/*', (route) => {
    const u = route.request().url();
    if (u.startsWith(origin + '/') || u.startsWith('blob:') || u.startsWith('data:')) return route.continue();
    blocked.push(u);
    return route.abort('blockedbyclient');
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });

  await page.goto(url, { waitUntil: 'load', timeout: TIMEOUT });
  await page.waitForSelector('img.widget-image', { state: 'visible', timeout: TIMEOUT });
  const handle = page.locator('.widget-slider .noUi-handle').first();
  await handle.waitFor({ state: 'visible', timeout: TIMEOUT });
  const before = await shown(page);
  await page.screenshot({ path: join(outDir, 'before.png'), fullPage: true });

  await handle.focus();
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((src) => {
    const im = Array.from(document.querySelectorAll('img.widget-image')).find((x) => x.offsetParent !== null);
    return im && im.src !== src;
  }, before.src, { timeout: TIMEOUT });
  const after = await shown(page);
  await page.screenshot({ path: join(outDir, 'after.png'), fullPage: true });

  await page.getByRole('button', { name: 'image + masks' }).click();
  await page.waitForFunction((src) => {
    const im = Array.from(document.querySelectorAll('img.widget-image')).find((x) => x.offsetParent !== null);
    return im && im.src !== src;
  }, after.src, { timeout: TIMEOUT });
  const overlay = await shown(page);
  await page.screenshot({ path: join(outDir, 'overlay.png'), fullPage: true });

  console.log(JSON.stringify({ before, after, overlay, blocked, requests, errors }));
} catch (e) {
  console.log(JSON.stringify({ failure: String(e && e.stack || e), blocked, requests, errors }));
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
