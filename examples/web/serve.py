"""Serve the browser page (examples/web/) with an exported folder, on 127.0.0.1.

    python examples/web/serve.py --model out/onnx-tjs            # then open the URL it prints

Three trees, nothing else:
  /               this folder's page (index.html, app.mjs)
  /model/         the exported folder (`lmexport onnx --target transformers.js`)
  /node_modules/  the web builds of transformers.js and onnxruntime-web from the committed
                  lockfile (tests/exporters/onnx/node/package-lock.json, installed by
                  scripts/setup_node.sh): only their dist/ folders are served, no CDN is used.
Every response carries the COOP/COEP headers that make the page cross-origin isolated, so
that onnxruntime-web may use SharedArrayBuffer and WebAssembly threads. Standard library only.
"""
from __future__ import annotations

import argparse
import http.server
import sys
from functools import partial
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

PAGE_DIR = Path(__file__).resolve().parent
DEFAULT_NODE_MODULES = PAGE_DIR.parents[1] / "tests" / "exporters" / "onnx" / "node" / "node_modules"
# the only parts of node_modules the page loads (the import map in index.html names them)
PACKAGES = ("@huggingface/transformers/dist", "onnxruntime-web/dist", "onnxruntime-common/dist")
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".html": "text/html; charset=utf-8", ".map": "application/json"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin"}


def routes(model: Path, node_modules: Path) -> list[tuple[str, Path]]:
    """(URL prefix, directory), longest prefix first."""
    table = [(f"/node_modules/{package}/", node_modules / package) for package in PACKAGES]
    return table + [("/model/", model), ("/", PAGE_DIR)]


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def __init__(self, *args, table, quiet, **kwargs):
        self.table, self.quiet = table, quiet
        super().__init__(*args, directory=str(PAGE_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        """The file under the route the URL names; "" (a 404) for a URL outside every route."""
        url = unquote(urlsplit(path).path)
        parts = PurePosixPath(url).parts[1:]
        if any(part in ("..", ".") or "\\" in part or "\0" in part for part in parts):
            return ""                                     # never climbs out of a route
        for prefix, root in self.table:
            if url.startswith(prefix) or url + "/" == prefix:
                rest = url[len(prefix):]
                return str(root.joinpath(*PurePosixPath(rest).parts)) if rest else str(root)
        return ""

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def end_headers(self):
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="a folder written by `lmexport onnx --target transformers.js`")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (default 8000)")
    parser.add_argument("--node-modules", type=Path, default=DEFAULT_NODE_MODULES,
                        help="node_modules with @huggingface/transformers (default: the tests' lockfile "
                             "install, made by scripts/setup_node.sh)")
    parser.add_argument("--quiet", action="store_true", help="no request log")
    args = parser.parse_args(argv)
    model, node_modules = args.model.resolve(), args.node_modules.resolve()
    if not (model / "lmexport.json").is_file() or not (model / "liquid_metal.mjs").is_file():
        print(f"error: {args.model} is not a folder written by `lmexport onnx --target transformers.js` "
              "(it needs lmexport.json and liquid_metal.mjs)", file=sys.stderr)
        return 2
    if not (node_modules / PACKAGES[0] / "transformers.web.js").is_file():
        print(f"error: {node_modules} has no @huggingface/transformers; run bash scripts/setup_node.sh",
              file=sys.stderr)
        return 2
    handler = partial(Handler, table=routes(model, node_modules), quiet=args.quiet)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    except OSError as error:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {error.strerror}; choose another --port",
              file=sys.stderr)
        return 2
    print(f"serving http://127.0.0.1:{server.server_port}/ (model {model}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
