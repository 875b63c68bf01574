// Load time and greedy decode tokens/s of an lmexport folder in transformers.js on Node
// (onnxruntime-node), timed as the browser page times them: load = the loader's call;
// decode = (new tokens - 1) over the time from the first new token to the last.
// Prints one JSON line.   node bench.mjs FOLDER MAX_NEW_TOKENS PROMPT [THREADS]
import * as transformers from '@huggingface/transformers';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [folder, maxNew, prompt, threads] = process.argv.slice(2);
transformers.env.allowRemoteModels = false;
const { loadLiquidMetal } = await import(pathToFileURL(resolve(folder, 'liquid_metal.mjs')).href);

const started = performance.now();
const session_options = threads ? { intraOpNumThreads: Number(threads) } : {};
const lm = await loadLiquidMetal(transformers, resolve(folder), { session_options });
const loadSeconds = (performance.now() - started) / 1000;
const inputs = await lm.encode([prompt]);
const times = [];
let seenInput = false;
const streamer = { put() { if (seenInput) times.push(performance.now()); seenInput = true; }, end() {} };
const eos = lm.manifest.tokenizer?.eos_token_ids ?? [];
const t0 = performance.now();
const out = await lm.model.generate({ ...inputs, max_new_tokens: Number(maxNew), do_sample: false, eos_token_id: eos, streamer });
console.log(JSON.stringify({
    load_seconds: loadSeconds,
    new_tokens: out.dims[1] - inputs.input_ids.dims[1],
    prefill_ms: times[0] - t0,
    decode_tokens_per_s: (times.length - 1) / ((times.at(-1) - times[0]) / 1000),
    threads: threads ? Number(threads) : null,
}));
