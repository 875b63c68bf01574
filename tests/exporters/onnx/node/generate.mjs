// Greedy generation from an lmexport folder in transformers.js, through the folder's own
// liquid_metal.mjs, as docs/runtime.md shows it. Prints one JSON line:
// {"prompt_ids": [[...], ...], "new_ids": [[...], ...]}.
//   node generate.mjs FOLDER MAX_NEW_TOKENS PROMPT [PROMPT ...]
import * as transformers from '@huggingface/transformers';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [folder, maxNew, ...prompts] = process.argv.slice(2);
transformers.env.allowRemoteModels = false;
transformers.env.localModelPath = '';
const { loadLiquidMetal } = await import(pathToFileURL(resolve(folder, 'liquid_metal.mjs')).href);

const lm = await loadLiquidMetal(transformers, resolve(folder));
const inputs = await lm.encode(prompts);
const out = await lm.model.generate({ ...inputs, max_new_tokens: Number(maxNew), do_sample: false });
const width = inputs.input_ids.dims[1];
const rows = out.tolist().map((row) => row.map(Number));
console.log(JSON.stringify({
    prompt_ids: inputs.input_ids.tolist().map((row) => row.map(Number)),
    new_ids: rows.map((row) => row.slice(width)),
}));
