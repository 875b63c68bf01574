// Run a Liquid-Metal folder (`lmexport onnx --target transformers.js`) in transformers.js.
//
//   import * as transformers from '@huggingface/transformers';
//   import { loadLiquidMetal } from './out/onnx-tjs/liquid_metal.mjs';
//
//   const lm = await loadLiquidMetal(transformers, 'out/onnx-tjs');
//   const inputs = await lm.encode(['def read_file(path):']);
//   const ids = await lm.model.generate({ ...inputs, max_new_tokens: 32, do_sample: false });
//   const fresh = ids.tolist()[0].slice(inputs.input_ids.dims[1]);
//   console.log(lm.tokenizer.decode(fresh, { skip_special_tokens: true }));
//
// Why this file exists (transformers.js 4.3, unchanged): its model-type table
// (`getCacheNames` in src/configs.js) decides which state inputs it creates before the
// first call, and `liquid_metal` is not in it, so it would create none and stop on
// "Missing the following inputs: past_key_values.0.key, ...". This module does three
// things and nothing else:
//   1. loads the folder with `LlamaForCausalLM`, transformers.js's generic decoder-only
//      class (the class is a name: it feeds the session's inputs; the graph is
//      Liquid-Metal's), from the folder's root (`subfolder: ''`) and its model file;
//   2. gives `model.generate` a zero state for every state input the folder's
//      lmexport.json declares (`init: "zeros"`: batch axis -> the batch, any other
//      named axis -> 0); after the first call transformers.js carries each output
//      `present*` to its input `past*` itself: the transformers.js target names the
//      states the way it renames them, and a folder it would carry elsewhere (the
//      default names) is refused instead of silently fed zeros;
//   3. `encode` gives the ids `lmexport generate` feeds: the tokenizer's own encoding
//      with special tokens (tokenizer.json's post-processor states whether BOS comes
//      first), shorter prompts of a batch left-padded with the pad id.
// The upstream change that would remove it is in docs/runtime.md ("Run it elsewhere").
//
// The transformers module is passed in, so this file imports nothing and works from any
// folder, in Node and in a browser (examples/web/). In Node it reads lmexport.json with
// `fs` and hands transformers.js the folder's path (onnxruntime-node reads the weights
// beside the graph); in a browser `path` is a URL path on the page's server, lmexport.json
// is fetched, and the weights file is fetched by transformers.js and handed to
// onnxruntime-web (`externalData`). A browser holds the weights in WebAssembly memory
// (wasm32: 4 GiB in all), so a folder whose graph and weights files (sizes from
// lmexport.json) exceed `maxWeightBytes` is refused before any weight is fetched.

const MANIFEST_FILE = 'lmexport.json';
const TEMPLATE_FILE = 'chat_template.jinja';
const BATCH_AXIS = 'batch_size';
const ARRAYS = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array }; // zeros of each dtype
const IN_NODE = typeof process !== 'undefined' && Boolean(process.versions?.node);
// Half of wasm32's 4 GiB, leaving the other half to onnxruntime's copies of what it
// transforms (pre-packed MatMulNBits blocks), the state and the activations. A conservative
// bound: the edge itself was not measured (docs/runtime.md, "In the browser").
export const BROWSER_MAX_WEIGHT_BYTES = 2 * 1024 ** 3;

/** The folder as transformers.js wants it: an absolute path in Node, the URL path in a browser. */
async function folderLocation(path) {
    if (!IN_NODE) return String(path).replace(/\/+$/, '');
    const { resolve } = await import('node:path'); // transformers.js takes a relative path for a Hub id
    return resolve(path);
}

async function readText(folder, name) {
    if (IN_NODE) {
        const [{ readFile }, { join }] = await Promise.all([import('node:fs/promises'), import('node:path')]);
        return readFile(join(folder, name), 'utf8');
    }
    const response = await fetch(`${folder}/${name}`);
    if (!response.ok) {
        throw new Error(`${folder}/${name}: HTTP ${response.status}; serve a folder written by ` +
            '`lmexport onnx --target transformers.js`');
    }
    return response.text();
}

/** Bytes of the graph and weights files, from lmexport.json's file list. */
export function weightBytes(manifest) {
    return [manifest.model_file, manifest.data_file].filter(Boolean)
        .reduce((sum, name) => sum + (manifest.files?.[name]?.bytes ?? 0), 0);
}

function gib(bytes) {
    return `${(bytes / 1024 ** 3).toFixed(bytes < 1024 ** 3 ? 3 : 1)} GiB`;
}

export async function loadLiquidMetal(transformers, path, {
    device = IN_NODE ? 'cpu' : 'wasm', session_options = {}, maxWeightBytes = BROWSER_MAX_WEIGHT_BYTES,
} = {}) {
    const folder = await folderLocation(path);
    const { AutoTokenizer, DynamicCache, LlamaForCausalLM, Tensor } = transformers;
    const manifest = JSON.parse(await readText(folder, MANIFEST_FILE));
    const states = manifest.inputs.filter((spec) => spec.init === 'zeros');
    const modelFile = manifest.model_file.replace(/\.onnx$/, '');
    const options = { ...session_options };
    if (!IN_NODE) {
        const bytes = weightBytes(manifest);
        if (bytes > maxWeightBytes) {
            throw new Error(`this folder's graph and weights are ${gib(bytes)}, more than the ${gib(maxWeightBytes)} ` +
                'a browser tab can hold in WebAssembly memory (wasm32: 4 GiB in all); export a smaller model or ' +
                '`--quantize int4`, or run the folder with Node or `lmexport generate`');
        }
        if (manifest.data_file && options.externalData === undefined) {
            options.externalData = [{ path: manifest.data_file, data: manifest.data_file }]; // fetched from the folder
        }
    }

    const tokenizer = await AutoTokenizer.from_pretrained(folder, { local_files_only: true });
    if (manifest.files?.[TEMPLATE_FILE]) {
        // the folder's chat template file wins over tokenizer_config.json's, as in lmexport and
        // transformers; transformers.js's tokenizer reads only the latter
        tokenizer.chat_template = await readText(folder, TEMPLATE_FILE);
    }
    const model = await LlamaForCausalLM.from_pretrained(folder, {
        local_files_only: true,
        subfolder: '',
        model_file_name: modelFile,
        dtype: 'fp32', // selects the file name `${model_file_name}.onnx`; the graph keeps its own precision
        device,
        session_options: options,
    });

    const pastNames = new Set(states.map((spec) => spec.name));
    /** The state between calls; refuses a state transformers.js carries to a name the graph lacks. */
    class LiquidMetalState extends DynamicCache {
        update(entries) {
            const foreign = Object.keys(entries).filter((name) => !pastNames.has(name));
            if (foreign.length > 0) {
                // e.g. present_context.N -> past_key_values_context.N: the past input would keep its zeros
                throw new Error(`transformers.js carries state to ${foreign.join(', ')}, which ${MANIFEST_FILE} ` +
                    'does not declare as graph inputs; export the folder with `lmexport onnx --target transformers.js`');
            }
            super.update(entries);
        }
    }

    /** A zero state for every state input the folder declares, for a batch of `batch` rows. */
    function initialState(batch) {
        const entries = {};
        for (const spec of states) {
            const shape = spec.shape.map((d) => (typeof d === 'number' ? d : d === BATCH_AXIS ? batch : 0));
            const size = shape.reduce((a, b) => a * b, 1);
            const Arr = ARRAYS[spec.dtype];
            if (!Arr) throw new Error(`${MANIFEST_FILE}: state ${spec.name} has dtype ${spec.dtype}, unknown here`);
            entries[spec.name] = new Tensor(spec.dtype, new Arr(size), shape);
        }
        return new LiquidMetalState(entries);
    }

    const pad = BigInt(manifest.tokenizer?.pad_token_id ?? 0);
    /** input_ids and attention_mask of a batch, shorter prompts left-padded (as `lmexport generate` does). */
    async function encode(texts) {
        // tokenizer.json's post-processor adds BOS/EOS or not: the folder's rule, lmexport's too
        const rows = texts.map((text) => tokenizer.encode(text, { add_special_tokens: true }));
        const width = Math.max(...rows.map((r) => r.length));
        const ids = new BigInt64Array(rows.length * width).fill(pad);
        const mask = new BigInt64Array(rows.length * width);
        rows.forEach((row, i) => {
            const start = i * width + width - row.length;
            ids.set(row.map(BigInt), start);
            mask.fill(1n, start, (i + 1) * width);
        });
        const dims = [rows.length, width];
        return { input_ids: new Tensor('int64', ids, dims), attention_mask: new Tensor('int64', mask, dims) };
    }

    const generate = model.generate.bind(model);
    model.generate = (options) =>
        generate({ ...options, past_key_values: options.past_key_values ?? initialState(options.input_ids.dims[0]) });

    return { model, tokenizer, encode, initialState, manifest };
}
