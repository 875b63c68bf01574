"""Chat templates from a model folder: sandboxed, under a time and a size limit, files kept inside the folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from lmexport.errors import ArtifactError, ChatTemplateError
from lmexport.modeling.tiny import make_tokenizer, write_tokenizer_files
from lmexport.runtime.chat_template import TemplateLimits, render_chat_template
from lmexport.runtime.tokenizer import TextTokenizer

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def memory_cap(request):
    """Address space capped 2 GB above what the process holds: a guard that regresses fails the
    test with a MemoryError instead of taking the machine's memory. (Not for the CLI test, whose
    export and subprocess need their usual room.)"""
    resource = pytest.importorskip("resource")
    if "cli" in request.node.name:
        yield
        return
    with open("/proc/self/status") as status:
        held = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (held + (2 << 30), before[1]))
    yield
    resource.setrlimit(resource.RLIMIT_AS, before)


def render(template: str, limits: TemplateLimits = TemplateLimits(seconds=1.0, max_chars=100_000), **named):
    return render_chat_template(template, {"messages": MESSAGES, "add_generation_prompt": True},
                                named=named, limits=limits)


def timed(template: str, **kw):
    start = time.monotonic()
    with pytest.raises(ChatTemplateError) as info:
        render(template, **kw)
    return info.value, time.monotonic() - start


@pytest.mark.parametrize("template", ["{{ 9 ** (9 ** 9) }}", "{% set x = 9 ** 9 %}{{ 9 ** x }}",
                                      "{{ (10 ** 5000) * (10 ** 5000) * (10 ** 99000) }}"])
def test_huge_numbers_are_refused_at_once(template):
    error, took = timed(template)
    assert "a number" in str(error) and took < 1.0


@pytest.mark.parametrize("template", ['{{ "A" * 4000000000 }}', '{{ ["x"] * 4000000000 }}', '{{ 4000000000 * "A" }}',
                                      '{{ "%04000000000d" % 1 }}', '{{ "x" | center(4000000000) }}',
                                      '{{ "{:04000000000}".format(1) }}', '{{ "{:04000000000}"["format"](1) }}',
                                      '{{ "%04000000000d" | format(1) }}',
                                      '{{ "x".center(4000000000) }}',
                                      '{% set a = "A" * 60000 %}{{ a + a }}'])
def test_huge_strings_are_refused_before_they_are_built(template):
    error, took = timed(template)
    assert "over the limit of 100,000" in str(error) and took < 1.0


def test_the_rendered_text_has_a_size_limit():
    error, _ = timed("{% for i in range(100000) %}{{ 'abcdefghij' }}{% endfor %}")
    assert "rendered text" in str(error)


def test_a_long_loop_stops_at_the_time_limit_in_the_main_thread():
    error, took = timed("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                        limits=TemplateLimits(seconds=0.5, max_chars=100_000))
    assert "longer than 0.5 s" in str(error) and took < 2.0


def test_a_long_loop_stops_at_the_time_limit_in_a_thread():
    """No SIGALRM outside the main thread: the deadline is checked at every call the template makes."""
    result = {}

    def work():
        try:
            render("{% for i in range(100000) %}{% for j in range(100000) %}{{ j | string | length }}"
                   "{% endfor %}{% endfor %}", limits=TemplateLimits(seconds=0.5, max_chars=10 ** 9))
        except ChatTemplateError as exc:
            result["error"] = exc
    thread = threading.Thread(target=work)
    start = time.monotonic()
    thread.start()
    thread.join(10)
    assert "longer than 0.5 s" in str(result.get("error")) and time.monotonic() - start < 3.0


def test_templates_include_only_the_folders_named_templates():
    assert render("[{% include 'tools' %}]", tools="T") == "[T]"
    for target in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(ChatTemplateError, match="fails"):
            render("{% include '" + target + "' %}")


def test_sandbox_syntax_and_errors_are_one_typed_error():
    for template in ("{{ messages.__class__.__mro__ }}", "{% for %}", "{{ 1 / 0 }}", "{{ raise_exception('no') }}"):
        with pytest.raises(ChatTemplateError) as info:
            render(template)
        assert "\n" not in str(info.value)


def test_transformers_helpers_are_there():
    out = render("{{ messages | tojson }}{% for m in messages %}{% break %}{% endfor %}{{ strftime_now('%Y') }}")
    assert out.startswith('[{"role": "user", "content": "hi"}]') and out[-4:].isdigit()


# ------------------------------------------------------------ template files stay inside the folder
def tokenizer_folder(path, config=None):
    path.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(make_tokenizer(), path)
    if config is not None:
        (path / "tokenizer_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def test_a_template_file_that_points_outside_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("{{ 'outside' }}")
    folder = tokenizer_folder(tmp_path / "model")
    os.symlink(secret, folder / "chat_template.jinja")
    with pytest.raises(ArtifactError, match="is a link to .*, outside the folder"):
        TextTokenizer.from_folder(folder)
    (folder / "chat_template.jinja").unlink()
    (folder / "additional_chat_templates").mkdir()
    os.symlink(secret, folder / "additional_chat_templates" / "tool_use.jinja")
    with pytest.raises(ArtifactError, match="is a link to .*, outside the folder"):
        TextTokenizer.from_folder(folder)


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path):
    repo = tmp_path / "models--org--tiny"
    folder = tokenizer_folder(repo / "snapshots" / "abc123")
    (repo / "blobs").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).rename(repo / "blobs" / name)
        os.symlink(repo / "blobs" / name, folder / name)
    (repo / "blobs" / "t").write_text("<{{ messages[0]['content'] }}>")
    os.symlink(repo / "blobs" / "t", folder / "chat_template.jinja")
    assert TextTokenizer.from_folder(folder).apply_chat_template(MESSAGES) == "<hi>"


def test_named_template_files_and_the_jinja_file_win(tmp_path):
    folder = tokenizer_folder(tmp_path / "model")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("tools")
    (folder / "chat_template.jinja").write_text("<{% include 'tool_use' %}>")
    tok = TextTokenizer.from_folder(folder)
    assert set(tok.templates) == {"default", "tool_use"} and tok.apply_chat_template(MESSAGES) == "<tools>"


@pytest.mark.parametrize("config, match", [("{oops", "not valid JSON"), ("[]", "not a list"),
                                           ({"chat_template": 7}, "string or a list"),
                                           ({"chat_template": [{"name": "default"}]}, "list entries")])
def test_a_bad_tokenizer_config_is_one_clear_error(tmp_path, config, match):
    folder = tokenizer_folder(tmp_path / "model", config)
    with pytest.raises(ArtifactError, match=match):
        TextTokenizer.from_folder(folder)


def test_cli_chat_with_a_hostile_template_exits_2_in_one_line(tmp_path):
    """``lmexport generate --chat`` on an exported folder whose template builds a 4 GB string."""
    from lmexport.exporters.onnx.export import OnnxExportOptions, export_onnx
    from lmexport.modeling.tiny import make_model_folder

    model = make_model_folder(tmp_path / "model", seed=0)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = '{{ "A" * 4000000000 }}'
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "onnx"
    export_onnx(model, out, OnnxExportOptions(validate=False))
    done = subprocess.run([sys.executable, "-m", "lmexport.cli", "generate", str(out), "--prompt", "hi", "--chat",
                           "--max-new-tokens", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "over the limit" in errors[0] and "Traceback" not in done.stderr
