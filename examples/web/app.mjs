// The page: an lmexport folder (`lmexport onnx --target transformers.js`) in transformers.js's web
// build on onnxruntime-web, loaded through the folder's own loader (/model/liquid_metal.mjs).
//
// URL parameters: model (URL path of the folder, default /model), device (wasm | webgpu),
// threads (WebAssembly threads; default onnxruntime-web's choice, 1 without cross-origin
// isolation), max_weight_mb (the loader's size limit; default half of wasm32's 4 GiB).
//
// Two modes: "complete" runs one prompt from a fresh state (the ids `lmexport generate` feeds);
// "chat" keeps the model's state between turns as lmexport's ChatSession does
// (lmexport/runtime/chat.py): each turn feeds only the text the conversation gained since the
// state was last fed, the chosen tokens (and their EOS) are fed back so that the state holds
// exactly `fed`, and a template that rewrites earlier turns rebuilds the state.
//
// For tests and benchmarks the page keeps what it did in `window.lmexport` (load, turns) and
// says where it is in <body data-state>: loading, ready, busy, error.
import * as transformers from '@huggingface/transformers';

const { env, Tensor } = transformers;
const ORT_DIST = '/node_modules/onnxruntime-web/dist/';
const params = new URLSearchParams(location.search);
const MODEL = params.get('model') ?? '/model';
const DEVICE = params.get('device') ?? 'wasm';
const $ = (id) => document.getElementById(id);

env.allowLocalModels = true;        // the folder comes from this page's server,
env.allowRemoteModels = false;      // never from a hub
env.localModelPath = '/';
env.useBrowserCache = false;        // each load fetches the folder (load times are measured)
env.useWasmCache = false;
const wasm = env.backends.onnx.wasm;
// the binary of the build index.html's import map chose: asyncify for WebGPU, plain otherwise
const WASM_FILE = `${ORT_DIST}ort-wasm-simd-threaded${DEVICE === 'webgpu' ? '.asyncify' : ''}`;
wasm.wasmPaths = { mjs: `${WASM_FILE}.mjs`, wasm: `${WASM_FILE}.wasm` };
if (params.has('threads')) wasm.numThreads = Number(params.get('threads'));

const page = { load: null, turns: [], error: null };
window.lmexport = page;

function setState(state, message, isError = false) {
    document.body.dataset.state = state;
    if (message !== undefined) {
        $('status').textContent = message;
        $('status').className = isError ? 'error' : '';
    }
    $('send').disabled = $('reset').disabled = state !== 'ready';
}

function fail(error) {
    const message = String(error?.message ?? error);
    page.error = message;
    setState('error', `error: ${message}`, true);
    console.error(error);
}
window.addEventListener('error', (event) => fail(event.error ?? event.message));
window.addEventListener('unhandledrejection', (event) => fail(event.reason));

/** Collects the ids generate() streams: the first put is the input, each later one a new token. */
class TokenStream {
    constructor(onToken) {
        this.onToken = onToken;
        this.seenInput = false;
        this.times = [];
    }
    put(value) {
        if (!this.seenInput) { this.seenInput = true; return; }
        this.times.push(performance.now());
        this.onToken(Number(value[0][0]));
    }
    end() {}
}

function ones(length) {
    return new Tensor('int64', new BigInt64Array(length).fill(1n), [1, length]);
}
function row(ids) {
    return new Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]);
}

async function load() {
    $('device').value = DEVICE;
    $('threads').value = params.get('threads') ?? '';
    if (DEVICE === 'webgpu') {
        // onnxruntime-web's own failure here names a Chrome flag; say what is missing instead
        const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
        if (!adapter) {
            throw new Error(`WebGPU is not available in this browser (${navigator.gpu ? 'no GPU adapter' : 'no navigator.gpu'}: ` +
                'it needs a secure context such as http://127.0.0.1, a browser with WebGPU on and a GPU it may use; ' +
                'headless Chromium without a GPU has none); choose wasm');
        }
    }
    const started = performance.now();
    const { loadLiquidMetal } = await import(`${MODEL}/liquid_metal.mjs`);
    const options = { device: DEVICE };
    if (params.has('max_weight_mb')) options.maxWeightBytes = Number(params.get('max_weight_mb')) * 1024 ** 2;
    const lm = await loadLiquidMetal(transformers, MODEL, options);
    const session = lm.model.sessions.model;
    page.load = {
        seconds: (performance.now() - started) / 1000,
        device: DEVICE,
        cross_origin_isolated: self.crossOriginIsolated,
        threads: wasm.numThreads,
        // onnxruntime-web's default: min(4, half the cores) when isolated, else 1
        user_agent: navigator.userAgent,
        weight_bytes: [lm.manifest.model_file, lm.manifest.data_file].filter(Boolean)
            .reduce((s, n) => s + (lm.manifest.files?.[n]?.bytes ?? 0), 0),
        dtype: lm.manifest.dtype,
        quantization: lm.manifest.quantization?.method ?? null,
        inputs: session?.inputNames?.length ?? null,
    };
    $('loadinfo').textContent = `${MODEL}: loaded in ${page.load.seconds.toFixed(2)} s on ${DEVICE}` +
        ` (${page.load.cross_origin_isolated ? `cross-origin isolated, ${wasm.numThreads ?? 'default'} threads`
            : 'not cross-origin isolated: 1 thread'})`;
    return lm;
}

function chatSession(lm) {
    const { tokenizer, model } = lm;
    const eos = lm.manifest.tokenizer?.eos_token_ids ?? [];
    const templated = Boolean(tokenizer.chat_template);
    let messages = [], fed = [], state = null, covered = [];

    function render() {
        if (templated) return tokenizer.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true });
        return messages.map((m) => m.content + (m.role === 'assistant' ? '' : '\n')).join('');
    }

    async function generate(inputIds, past, maxNew, onToken) {
        const stream = new TokenStream(onToken);
        const started = performance.now();
        const out = await model.generate({
            input_ids: row(inputIds), attention_mask: ones(past + inputIds.length),
            ...(state ? { past_key_values: state } : {}),
            max_new_tokens: maxNew, do_sample: false, eos_token_id: eos, return_dict_in_generate: true,
            streamer: stream,
        });
        const ids = out.sequences.tolist()[0].map(Number).slice(inputIds.length);
        const t = stream.times;
        return {
            ids, cache: out.past_key_values,
            prefill_ms: t.length ? t[0] - started : null,
            decode_tokens_per_s: t.length > 1 ? (t.length - 1) / ((t.at(-1) - t[0]) / 1000) : null,
        };
    }

    async function send(text, maxNew, onToken) {
        messages.push({ role: 'user', content: text });
        const rendered = render();
        let ids = null;
        if (state) {
            const prefix = covered.find((c) => rendered.startsWith(c));
            if (prefix !== undefined) ids = tokenizer.encode(rendered.slice(prefix.length), { add_special_tokens: false });
        }
        const rebuild = ids === null;
        if (rebuild) {
            ids = tokenizer.encode(rendered, { add_special_tokens: !templated });
            state = null;
            fed = [];
        }
        const past = fed.length;
        const turn = await generate(ids, past, maxNew, onToken);
        state = turn.cache;
        const endedWithEos = turn.ids.length > 0 && eos.includes(turn.ids.at(-1));
        const reply = endedWithEos ? turn.ids.slice(0, -1) : turn.ids;
        // every chosen token but the last is in the state; feed the last (the EOS too) to keep it whole
        const last = turn.ids.at(-1);
        const total = past + ids.length + turn.ids.length;
        const fill = await model.generate({
            input_ids: row([last]), attention_mask: ones(total), past_key_values: state,
            max_new_tokens: 1, do_sample: false, return_dict_in_generate: true,
        });
        state = fill.past_key_values;
        fed = [...fed, ...ids, ...turn.ids];
        const replyText = tokenizer.decode(reply, { skip_special_tokens: true });
        messages.push({ role: 'assistant', content: replyText });
        const fedText = rendered + replyText;
        covered = endedWithEos ? [fedText + tokenizer.decode([last], { skip_special_tokens: false }), fedText] : [fedText];
        return { ...turn, rebuild, new_ids: ids, reply_ids: reply, text: replyText, finish: endedWithEos ? 'eos' : 'length',
                 fed: [...fed] };
    }

    function reset() {
        messages = []; fed = []; state = null; covered = [];
    }
    return { send, reset };
}

async function complete(lm, prompt, maxNew, onToken) {
    const eos = lm.manifest.tokenizer?.eos_token_ids ?? [];
    const inputs = await lm.encode([prompt]);
    const stream = new TokenStream(onToken);
    const started = performance.now();
    const out = await lm.model.generate({ ...inputs, max_new_tokens: maxNew, do_sample: false, eos_token_id: eos, streamer: stream });
    const width = inputs.input_ids.dims[1];
    const ids = out.tolist()[0].map(Number).slice(width);
    const endedWithEos = ids.length > 0 && eos.includes(ids.at(-1));
    const reply = endedWithEos ? ids.slice(0, -1) : ids;
    const t = stream.times;
    return {
        prompt_ids: inputs.input_ids.tolist()[0].map(Number), reply_ids: reply, finish: endedWithEos ? 'eos' : 'length',
        text: lm.tokenizer.decode(reply, { skip_special_tokens: true }),
        prefill_ms: t.length ? t[0] - started : null,
        decode_tokens_per_s: t.length > 1 ? (t.length - 1) / ((t.at(-1) - t[0]) / 1000) : null,
    };
}

function append(text, className) {
    const span = document.createElement('span');
    if (className) span.className = className;
    span.textContent = text;
    $('transcript').append(span);
    return span;
}

async function main() {
    $('reload').onclick = () => {
        const next = new URLSearchParams(params);
        next.set('device', $('device').value);
        if ($('threads').value) next.set('threads', $('threads').value); else next.delete('threads');
        location.search = next.toString();
    };
    setState('loading', `loading ${MODEL} on ${DEVICE}…`);
    const lm = await load();
    const chat = chatSession(lm);
    $('reset').onclick = () => { chat.reset(); $('transcript').textContent = ''; $('stats').textContent = ''; };
    $('send').onclick = async () => {
        const mode = document.querySelector('input[name=mode]:checked').value;
        const text = $('prompt').value;
        const maxNew = Number($('max-new').value);
        setState('busy', 'generating…');
        try {
            append(mode === 'chat' ? `\n> ${text}\n` : `\n${text}`, 'user');
            const out = append('');
            const streamed = [];
            const onToken = (id) => {
                streamed.push(id);
                out.textContent = lm.tokenizer.decode(streamed, { skip_special_tokens: true });
            };
            const result = mode === 'chat' ? await chat.send(text, maxNew, onToken) : await complete(lm, text, maxNew, onToken);
            out.textContent = result.text;
            page.turns.push({ mode, prompt: text, max_new_tokens: maxNew, ...result, cache: undefined });
            const speed = result.decode_tokens_per_s;
            $('stats').textContent = `${result.reply_ids.length} new tokens, prefill ${result.prefill_ms?.toFixed(1)} ms, ` +
                `decode ${speed ? speed.toFixed(1) : '-'} tokens/s`;
            setState('ready', 'ready');
        } catch (error) {
            fail(error);
        }
    };
    setState('ready', 'ready');
}

main().catch(fail);
