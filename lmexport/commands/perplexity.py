from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("perplexity")
@click.argument("target", type=click.Path(path_type=Path), metavar="MODEL_OR_ARTIFACT")
@click.option("--text", "text_file", required=True, type=click.Path(path_type=Path), help="UTF-8 text to score.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="The folder of the tokenizer files, or its tokenizer.json (default: MODEL_OR_ARTIFACT's "
                   "folder). Ids are those transformers gives for that folder.")
@click.option("--max-tokens", type=click.IntRange(2), help="Score only the first N tokens of the text.")
@click.option("--window", default=256, show_default=True, type=click.IntRange(2),
              help="Tokens per window (capped at the model's context).")
@click.option("--stride", type=click.IntRange(1), help="Window start spacing, below --window (default: window - 1, windows share one token).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--engine", type=click.Choice(["auto", "llama.cpp"]), default="auto", show_default=True,
              help="auto: a GGUF is scored through its PyTorch rebuild; llama.cpp: in the patched llama.cpp "
                   "(lmexport llamacpp build), its own logits.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def perplexity(target, text_file, tokenizer, max_tokens, window, stride, device, engine, as_json):
    """Perplexity of a PyTorch model folder, an ONNX folder (any variant) or a GGUF file.

    Every kind is scored with the same windows (lmexport/perplexity.py), so the
    numbers compare: windows of --window tokens, each from an empty state,
    every token but the first scored exactly once.
    """
    from lmexport.errors import InputError
    from lmexport.perplexity import perplexity as run
    from lmexport.perplexity.scoring import open_scorer

    from lmexport.engine import artifact_kind

    artifact_kind(target)                # what the path is, before anything else is read
    try:
        text = text_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"text file {text_file} does not exist") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"text file {text_file} is not UTF-8 (byte {exc.start})", hint="save it as UTF-8") from None
    if engine == "llama.cpp":       # before the tokenizer: without the build, one line on how to build it
        from lmexport.runtime.llamacpp.install import require_patched
        require_patched()
    from lmexport.manifest import MANIFEST_FILE
    from lmexport.modeling.precheck import precheck
    from lmexport.modeling.tokenizer import folder_tokenizer

    if target.is_dir() and not (target / MANIFEST_FILE).is_file():
        precheck(target)                 # a model folder's config.json, before its tokenizer is read

    ids = folder_tokenizer(_tokenizer_folder(target, tokenizer)).encode(text)
    if max_tokens:
        ids = ids[:max_tokens]
    scorer, kind, context = open_scorer(target, device, engine)
    result = run(scorer, ids, min(window, context), stride, progress=True, desc=f"perplexity ({kind})")
    if as_json:
        click.echo(json.dumps({"artifact": str(target), "kind": kind, **result.to_dict()}, indent=2))
    else:
        click.echo(f"{kind} {target}: perplexity {result.perplexity:.4f} over {result.n_targets} tokens "
                   f"(window {result.window}, stride {result.stride})")


def _tokenizer_folder(target: Path, given: Path | None) -> Path:
    from lmexport.errors import InputError
    from lmexport.modeling.tokenizer import has_tokenizer

    if given is not None and not given.is_dir():
        if not given.exists():
            raise InputError(f"--tokenizer {given} does not exist")
        if given.name != "tokenizer.json":
            raise InputError(f"--tokenizer {given} is a file not named tokenizer.json; --tokenizer takes a folder of "
                             "tokenizer files (tokenizer.json or tokenizer.model, tokenizer_config.json) or its "
                             "tokenizer.json", hint="pass the folder that holds the model's tokenizer files")
    folder = (given if given.is_dir() else given.parent) if given else (target if target.is_dir() else target.parent)
    if not has_tokenizer(folder):
        raise InputError(f"no tokenizer (tokenizer.json or tokenizer.model) found in {folder}",
                         hint="pass --tokenizer with the model folder it came from")
    return folder
