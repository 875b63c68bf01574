// Drive examples/web/ in headless Chromium (the system's, through puppeteer-core: nothing is
// downloaded) and print one JSON line: the page's final state and status, window.lmexport
// (load, turns), the URL paths it requested, its console, and whether the tab crashed.
//   node browser.mjs URL STEPS_JSON
// STEPS_JSON: [{"mode": "chat"|"complete", "prompt": "...", "max_new_tokens": N} | {"reset": true}, ...],
// or {"graphs": [{"name", "model" (base64 ONNX), "feeds": {name: {dtype, shape, data}}}, ...]}: once the
// page is ready, each graph runs on the page's onnxruntime-web (WebAssembly provider) and the
// result has "graphs": {name: {dims, data} | {error}}.
// Environment: LMEXPORT_CHROMIUM (default /usr/bin/chromium), LMEXPORT_BROWSER_TIMEOUT_S
// (default 120: each wait; the whole run gets twice that times the steps plus one).
import puppeteer from 'puppeteer-core';

const [url, stepsJson = '[]'] = process.argv.slice(2);
const request = JSON.parse(stepsJson);
const steps = Array.isArray(request) ? request : [];
const graphs = Array.isArray(request) ? [] : request.graphs;
const executablePath = process.env.LMEXPORT_CHROMIUM ?? '/usr/bin/chromium';
const timeout = 1000 * Number(process.env.LMEXPORT_BROWSER_TIMEOUT_S ?? 120);
const log = [], requests = [];
let browser = null, crashed = false;

async function finish(result, code) {
    clearTimeout(watchdog);
    console.log(JSON.stringify({ ...result, requests, log, crashed }));
    try { await browser?.close(); } catch { /* already gone */ }
    process.exit(code);
}
const watchdog = setTimeout(() => finish({ state: 'timeout', status: 'the run took too long' }, 3),
    2 * timeout * (steps.length + 1));

const settled = (previous) => {
    const state = document.body.dataset.state;
    return state === 'error' || (state === 'ready' && window.lmexport.turns.length > previous);
};

try {
    browser = await puppeteer.launch({
        executablePath,
        headless: true,
        timeout: 30000,
        // --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start
        args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run', '--disable-extensions'],
    });
    const page = await browser.newPage();
    page.setDefaultTimeout(timeout);
    page.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    page.on('error', (e) => { crashed = true; log.push(`crash: ${e.message}`); });
    page.on('request', (r) => requests.push(new URL(r.url()).pathname));
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state));
    for (const step of steps) {
        if (await page.evaluate(() => document.body.dataset.state) === 'error') break;
        if (step.reset) { await page.click('#reset'); continue; }
        const before = await page.evaluate(() => window.lmexport.turns.length);
        await page.$eval('#prompt', (el, value) => { el.value = value; }, step.prompt);
        await page.$eval('#max-new', (el, value) => { el.value = String(value); }, step.max_new_tokens);
        await page.click(`input[name=mode][value=${step.mode}]`);
        await page.click('#send');
        await page.waitForFunction(settled, {}, before);
    }
    const graphResults = graphs.length === 0 ? undefined : await page.evaluate(async (list) => {
        const ort = await import('onnxruntime-web/webgpu'); // the page's copy, through its import map
        const arrays = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array };
        const results = {};
        for (const graph of list) {
            try {
                const bytes = Uint8Array.from(atob(graph.model), (c) => c.charCodeAt(0));
                const session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
                const feeds = {};
                for (const [name, f] of Object.entries(graph.feeds)) {
                    const data = f.dtype === 'int64' ? f.data.map(BigInt) : f.data;
                    feeds[name] = new ort.Tensor(f.dtype, arrays[f.dtype].from(data), f.shape);
                }
                const y = (await session.run(feeds))[session.outputNames[0]];
                results[graph.name] = { dims: y.dims, data: Array.from(y.data, Number) };
            } catch (error) {
                results[graph.name] = { error: String(error?.message ?? error) };
            }
        }
        return results;
    }, graphs);
    const result = await page.evaluate(() => ({
        state: document.body.dataset.state,
        status: document.getElementById('status').textContent,
        load: window.lmexport.load,
        turns: window.lmexport.turns,
        error: window.lmexport.error,
    }));
    await finish({ ...result, graphs: graphResults }, 0);
} catch (error) {
    await finish({ state: 'driver-error', status: String(error?.stack ?? error) }, 1);
}
