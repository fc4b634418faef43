// End-to-end test of the browser page: serves the built dist folder, drives headless
// Chromium through the demo (WebGPU on SwiftShader), checks what the page reports against
// the shipped artifact, saves a screenshot, then checks the CPU fallback in a browser
// without WebGPU.
//
//   node web/tests/e2e.mjs [--dist web/dist] [--screenshot docs/web.png] [--timeout-s 600]
//                          [--skip-fallback] [--chromium /usr/bin/chromium] [--distilled-out FILE]
//
// Exit code 0 on success; on failure, 1 and a line starting with "FAIL:".
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

// Flags every browser gets. The background-networking ones keep Chromium from trying to
// reach update, sync and safe-browsing hosts on a machine with no network.
const BASE_ARGS = [
  '--headless=new', '--no-sandbox', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// The WebGPU browser: Dawn's SwiftShader (CPU Vulkan) adapter. Chromium only exposes that
// adapter with --enable-unsafe-webgpu; without it, a GPU-less host has no adapter at all.
const WEBGPU_ARGS = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];
// The fallback browser. WebGPUService is the base::Feature that gates WebGPU in the GPU
// process (chrome://gpu then says "WebGPU: Disabled"); navigator.gpu stays defined but
// requestAdapter() resolves to null. "--disable-features=WebGPU" names no feature in
// Chromium 156 and does nothing. --enable-unsafe-webgpu overrides both, so it must be absent.
const NO_WEBGPU_ARGS = ['--disable-features=WebGPUService'];

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm', // needed by WebAssembly.instantiateStreaming
  '.safetensors': 'application/octet-stream',
  '.png': 'image/png',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

class Failure extends Error {}
const fail = (msg) => { throw new Failure(msg); };
const log = (msg) => console.log(`[e2e] ${msg}`);

/**
 * Expected number of tiles for a safetensors file's bytes: bases x hallucinators, or bases
 * alone when the set has none. Layout: u64 LE header length N, N bytes of JSON holding
 * `{name: {dtype, shape, data_offsets}}` and `__metadata__` (string values).
 * The hallucinator count is read from metadata `hallucinators` (a JSON string: an object
 * with a numeric `count`, or "null"), else from the `hallucinators` field of the JSON
 * under metadata `haba` (what src/artifact.rs writes). When the tensor
 * `hallucinators.enc.weight` exists, its first dimension must agree.
 */
export function expectedTiles(bytes) {
  const surprised = (why, header) => fail(
    `distilled.safetensors: ${why}; found ${describeHeader(header)}`);
  if (bytes.length < 8) surprised(`only ${bytes.length} bytes`);
  const n = Number(bytes.readBigUInt64LE(0));
  if (8 + n > bytes.length) surprised(`header length ${n} runs past the file's ${bytes.length} bytes`);
  let header;
  try { header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')); }
  catch (e) { surprised(`header is not JSON (${e.message})`); }

  const bases = header.bases?.shape?.[0];
  if (!Number.isInteger(bases) || bases < 1) surprised('no tensor "bases" with a first dimension', header);

  const meta = header.__metadata__ ?? {};
  let source, raw;
  if ('hallucinators' in meta) { source = 'metadata "hallucinators"'; raw = meta.hallucinators; }
  else if ('haba' in meta) {
    source = 'metadata "haba" .hallucinators';
    try { raw = JSON.stringify(JSON.parse(meta.haba).hallucinators ?? null); }
    catch (e) { surprised(`metadata "haba" is not JSON (${e.message})`, header); }
  } else surprised('no metadata key "hallucinators" (nor "haba")', header);

  let parsed;
  try { parsed = JSON.parse(raw); } catch (e) { surprised(`${source} = ${JSON.stringify(raw)} is not JSON`, header); }
  let count = null; // null: no hallucinators, one tile per basis
  if (parsed !== null) {
    count = parsed?.count;
    if (!Number.isInteger(count) || count < 1) surprised(`${source} = ${JSON.stringify(raw)} has no positive integer "count"`, header);
  }
  const fromTensor = header['hallucinators.enc.weight']?.shape?.[0];
  if ((fromTensor ?? null) !== count) {
    surprised(`${source} says ${count} hallucinators but tensor hallucinators.enc.weight says ${fromTensor ?? 'none'}`, header);
  }
  return { tiles: bases * (count ?? 1), bases, hallucinators: count, source };
}

function describeHeader(header) {
  if (!header) return 'no readable header';
  const tensors = Object.entries(header).filter(([k]) => k !== '__metadata__')
    .map(([k, v]) => `${k} ${v?.dtype}${JSON.stringify(v?.shape)}`);
  const meta = Object.entries(header.__metadata__ ?? {})
    .map(([k, v]) => `${k}=${String(v).length > 200 ? String(v).slice(0, 200) + '...' : v}`);
  return `tensors [${tensors.join(', ')}], metadata {${meta.join('; ')}}`;
}

/** Iterations of the distillation the CPU tour ends with. */
const DISTILL_ITERATIONS = 2;

/** A static file server for `root` on 127.0.0.1 at a free port. */
export async function serve(root) {
  root = fs.realpathSync(root);
  const server = http.createServer((req, res) => {
    const send = (code, body) => { res.writeHead(code, { 'content-type': 'text/plain' }); res.end(body); };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    let rel;
    try { rel = decodeURIComponent(new URL(req.url, 'http://x').pathname); }
    catch { return send(400, 'bad path\n'); }
    // Resolve against root and refuse anything that lands outside it (.., encoded or not).
    let file = path.resolve(root, '.' + path.posix.normalize('/' + rel));
    if (file !== root && !file.startsWith(root + path.sep)) return send(404, 'not found\n');
    try {
      if (fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
      // A symlink inside dist must not lead outside it either.
      const real = fs.realpathSync(file);
      if (!real.startsWith(root + path.sep) || !fs.statSync(real).isFile()) throw new Error();
      file = real;
    } catch { return send(404, 'not found\n'); }
    res.writeHead(200, {
      'content-type': MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
      'content-length': fs.statSync(file).size,
      'cache-control': 'no-store',
    });
    if (req.method === 'HEAD') return res.end();
    fs.createReadStream(file).on('error', () => res.destroy()).pipe(res);
  });
  await new Promise((ok, ko) => server.once('error', ko).listen(0, '127.0.0.1', ok));
  return server;
}

/** Launches Chromium with a fresh profile; `close()` also removes the profile. */
async function launch(executablePath, extraArgs, label) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'haba-e2e-profile-'));
  const t0 = Date.now();
  // headless: false so Playwright adds no --headless of its own: --headless=new is in args.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, headless: false, args: [...BASE_ARGS, ...extraArgs],
    viewport: { width: 1280, height: 900 },
  }).catch((e) => { fs.rmSync(profile, { recursive: true, force: true }); throw e; });
  log(`${label} browser: Chromium ${context.browser()?.version() ?? '?'} started in ${Date.now() - t0} ms`);
  const close = async () => {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/** A new tab whose console, errors and failed requests go to stdout as `[page]`. */
async function newPage(context, label) {
  const page = await context.newPage();
  page.on('console', (m) => {
    // Chromium's own errors (a failed load, say) name their URL only in the location.
    const where = m.type() === 'error' && m.location().url ? ` (${m.location().url})` : '';
    console.log(`[page] ${label} ${m.type()}: ${m.text()}${where}`);
  });
  page.on('pageerror', (e) => console.log(`[page] ${label} uncaught: ${e.stack ?? e}`));
  page.on('crash', () => console.log(`[page] ${label} the tab crashed`));
  page.on('requestfailed', (r) => console.log(`[page] ${label} request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) console.log(`[page] ${label} HTTP ${r.status()} ${r.url()}`); });
  return page;
}

/**
 * Whether WebGPU gives this browser an adapter, asked in a blank page of the server's
 * origin (navigator.gpu exists only in secure contexts: about:blank is not one, 127.0.0.1
 * is). The blank page is answered by Playwright's router, so the server never sees it.
 */
async function probeWebGPU(context, origin, label) {
  const page = await context.newPage();
  try {
    const url = `${origin}/__e2e_blank__`;
    await page.route(url, (r) => r.fulfill({ contentType: 'text/html', body: '<!doctype html><title>blank</title>' }));
    await page.goto(url);
    const r = await page.evaluate(async () => {
      const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
      const info = adapter?.info ?? {};
      return {
        available: !!navigator.gpu && !!adapter,
        navigatorGpu: !!navigator.gpu,
        info: adapter && `vendor=${info.vendor} architecture=${info.architecture} device=${info.device} description=${info.description} fallback=${adapter.isFallbackAdapter ?? info.isFallbackAdapter}`,
      };
    });
    log(`${label} browser: !!navigator.gpu && !!(await navigator.gpu.requestAdapter()) = ${r.available}` +
      (r.info ? ` (${r.info})` : r.navigatorGpu ? ' (navigator.gpu present, no adapter)' : ' (no navigator.gpu)'));
    return r.available;
  } finally { await page.close(); }
}

/** Waits until body[data-state] is one of `states`; fails on "error" or timeout. */
async function waitForState(page, states, timeoutS, label) {
  const t0 = Date.now();
  const text = (sel) => page.locator(sel).first().textContent({ timeout: 2000 }).then((t) => t?.trim(), () => null);
  let state;
  try {
    // Polling (not rAF): a page busy training still yields to timers between steps.
    const handle = await page.waitForFunction((want) => {
      const s = document.body?.dataset.state;
      return (want.includes(s) || s === 'error') && s;
    }, states, { timeout: timeoutS * 1000, polling: 500 });
    state = await handle.jsonValue();
  } catch (e) {
    const now = await page.evaluate(() => document.body?.dataset.state).catch(() => '?');
    fail(`${label}: no state ${states.join('/')} after ${timeoutS} s (state ${JSON.stringify(now)}, ${e.message.split('\n')[0]}); #status: ${JSON.stringify(await text('#status'))}`);
  }
  if (state === 'error') fail(`${label}: the page reports an error; #status: ${JSON.stringify(await text('#status'))}`);
  log(`${label}: state "${state}" after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return text;
}

async function main() {
  const { values: opt } = parseArgs({
    options: {
      dist: { type: 'string', default: 'web/dist' },
      screenshot: { type: 'string', default: 'docs/web.png' },
      'timeout-s': { type: 'string', default: '600' },
      'skip-fallback': { type: 'boolean', default: false },
      // Where to save the set the CPU run distils (for `haba eval` to read back).
      'distilled-out': { type: 'string' },
      chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    },
  });
  const timeoutS = Number(opt['timeout-s']);
  if (!(timeoutS > 0)) fail(`--timeout-s must be a positive number, got ${opt['timeout-s']}`);
  const artifact = path.join(opt.dist, 'distilled.safetensors');
  if (!fs.existsSync(path.join(opt.dist, 'index.html'))) fail(`${opt.dist}/index.html not found: build the page first (web/build.sh)`);
  if (!fs.existsSync(artifact)) fail(`${artifact} not found`);
  const expected = expectedTiles(fs.readFileSync(artifact));
  log(`artifact: ${expected.bases} bases x ${expected.hallucinators ?? 'no'} hallucinators (${expected.source}) = ${expected.tiles} tiles expected`);

  // Everything opened is closed in `finally`, in reverse order, whatever fails.
  const cleanups = [];
  // Last resort so CI never hangs: Playwright's own timeouts should fire long before this.
  const watchdog = setTimeout(() => { console.error('FAIL: watchdog: the test ran too long'); process.exit(2); },
    (2 * timeoutS + 300) * 1000);
  watchdog.unref();
  try {
    const server = await serve(opt.dist);
    cleanups.push(() => { server.closeAllConnections(); server.close(); });
    const origin = `http://127.0.0.1:${server.address().port}`;
    log(`serving ${opt.dist} at ${origin}`);

    // 1. The demo on WebGPU.
    const gpu = await launch(opt.chromium, WEBGPU_ARGS, 'WebGPU');
    cleanups.push(gpu.close);
    const gpuAvailable = await probeWebGPU(gpu.context, origin, 'WebGPU');
    if (!gpuAvailable) log('WARNING: this browser has no WebGPU adapter; the page will run on the CPU');
    const page = await newPage(gpu.context, 'demo');
    // 'commit': the load event may wait on the wasm; the state wait below has the real timeout.
    await page.goto(`${origin}/?demo`, { waitUntil: 'commit' });
    const text = await waitForState(page, ['trained'], timeoutS, 'demo');

    const tilesText = await text('#tiles');
    if (!/^\d+$/.test(tilesText ?? '')) fail(`#tiles should hold an integer, holds ${JSON.stringify(tilesText)}`);
    if (Number(tilesText) !== expected.tiles) fail(`#tiles says ${tilesText}, the artifact makes ${expected.tiles} (${expected.bases} bases x ${expected.hallucinators ?? 'no'} hallucinators)`);
    log(`tiles: ${tilesText} (as expected)`);

    const accText = await text('#accuracy');
    const acc = Number(/^(\d+(?:\.\d+)?)\s*%$/.exec(accText ?? '')?.[1]);
    if (Number.isNaN(acc)) fail(`#accuracy should read like "NN.N %", reads ${JSON.stringify(accText)}`);
    log(`accuracy: ${acc} %`);
    if (!(acc > 30)) fail(`accuracy ${acc} % is not above 30 % (chance is 10 %)`);

    const backend = await text('#backend');
    log(`backend: ${backend}`);
    if (gpuAvailable && !/webgpu/i.test(backend ?? '')) fail(`the browser has a WebGPU adapter but #backend says ${JSON.stringify(backend)}`);

    fs.mkdirSync(path.dirname(path.resolve(opt.screenshot)), { recursive: true });
    await page.screenshot({ path: opt.screenshot, fullPage: true });
    log(`screenshot: ${opt.screenshot}`);
    await gpu.close(); cleanups.pop();

    // 2. The CPU fallback, in a browser without WebGPU.
    if (opt['skip-fallback']) log('fallback check skipped');
    else {
      const cpu = await launch(opt.chromium, NO_WEBGPU_ARGS, 'no-WebGPU');
      cleanups.push(cpu.close);
      if (await probeWebGPU(cpu.context, origin, 'no-WebGPU')) fail(`the fallback browser still has a WebGPU adapter despite ${NO_WEBGPU_ARGS.join(' ')}`);
      // The CPU does the whole tour too, briefly, ending with a distillation to download.
      const fb = await newPage(cpu.context, 'fallback');
      await fb.goto(`${origin}/?demo&epochs=2&distill=${DISTILL_ITERATIONS}`, { waitUntil: 'commit' });
      const fbText = await waitForState(fb, ['distilled'], timeoutS, 'fallback');
      const fbBackend = await fbText('#backend');
      log(`fallback backend: ${fbBackend}`);
      if (!/cpu/i.test(fbBackend ?? '')) fail(`fallback: #backend should name the CPU, says ${JSON.stringify(fbBackend)}`);
      const why = [await fbText('#status'), await fbText('#webgpu-note')].filter(Boolean);
      if (!why.some((t) => /webgpu/i.test(t))) fail(`fallback: neither #status nor #webgpu-note mentions WebGPU: ${JSON.stringify(why)}`);
      log(`fallback note: ${why.find((t) => /webgpu/i.test(t))}`);
      log(`fallback: trained to ${await fbText('#accuracy')} in 2 epochs; ${await fbText('#status')}`);

      // The download link holds a whole distilled.safetensors: 10 classes x 1 basis x 5
      // hallucinators, as the page's quick settings make.
      const bytes = Buffer.from(await fb.evaluate(async () => {
        const link = document.getElementById('download');
        if (link.hidden || !link.href) return [];
        return Array.from(new Uint8Array(await (await fetch(link.href)).arrayBuffer()));
      }));
      if (bytes.length === 0) fail('fallback: the distillation left no download');
      const made = expectedTiles(bytes);
      if (made.tiles !== 50) fail(`fallback: the downloaded set makes ${made.tiles} images, expected 50 (10 bases x 5 hallucinators)`);
      log(`download: ${bytes.length} bytes, ${made.bases} bases x ${made.hallucinators} hallucinators`);
      if (opt['distilled-out']) {
        fs.writeFileSync(opt['distilled-out'], bytes);
        log(`download saved to ${opt['distilled-out']}`);
      }
    }
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
  console.log('e2e: 1 passed, 0 failed');
}

// Run only when executed, so expectedTiles can be imported by other scripts.
if (import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) {
  main().then(() => process.exit(0), (e) => {
    console.error(`FAIL: ${e instanceof Failure ? e.message : e.stack ?? e}`);
    console.log('e2e: 0 passed, 1 failed');
    process.exit(1);
  });
}
