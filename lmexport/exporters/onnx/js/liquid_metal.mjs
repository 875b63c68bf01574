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
// The transformers module is passed in, so this file imports nothing but Node's fs and
// works from any folder.
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

const MANIFEST_FILE = 'lmexport.json';
const BATCH_AXIS = 'batch_size';
const ARRAYS = { float32: Float32Array, float16: Uint16Array, int64: BigInt64Array }; // zeros of each dtype

async function readJSON(path) {
    return JSON.parse(await readFile(path, 'utf8'));
}

export async function loadLiquidMetal(transformers, path, { device = 'cpu', session_options = {} } = {}) {
    const folder = resolve(path); // transformers.js takes a relative path for a Hub id
    const { AutoTokenizer, DynamicCache, LlamaForCausalLM, Tensor } = transformers;
    const manifest = await readJSON(join(folder, MANIFEST_FILE));
    const states = manifest.inputs.filter((spec) => spec.init === 'zeros');
    const modelFile = manifest.model_file.replace(/\.onnx$/, '');

    const tokenizer = await AutoTokenizer.from_pretrained(folder, { local_files_only: true });
    const model = await LlamaForCausalLM.from_pretrained(folder, {
        local_files_only: true,
        subfolder: '',
        model_file_name: modelFile,
        dtype: 'fp32', // selects the file name `${model_file_name}.onnx`; the graph keeps its own precision
        device,
        session_options,
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

    return { model, tokenizer, encode, initialState };
}
