"""Chat templates from a model folder, rendered sandboxed and under limits.

A template is code that came with a download, so it is rendered in Jinja's
``ImmutableSandboxedEnvironment`` (it can format messages, not reach Python
objects) and under two limits (``TemplateLimits``):

* **time**: a wall-clock deadline, checked at every call, attribute lookup,
  operator and output chunk the template makes, and (in the main thread) by a
  ``SIGALRM`` timer that interrupts a loop that makes none of them;
* **size**: the rendered text, and any string, list or number an operator would
  build, may not exceed ``max_chars`` characters (about ``max_chars`` digits for
  a number). The operators that build big values from small ones (``*``, ``**``,
  ``+``, ``%`` formatting) are intercepted and their result size computed
  before they run, so ``9 ** (9 ** 9)`` or ``"A" * 4000000000`` are refused at
  once instead of hanging or exhausting memory. (Jinja does not fold an
  intercepted operator at compile time, so this holds for constants too.)

A breach is a ``ChatTemplateError`` (one line, exit 2), as is any other failure
of the template: a syntax error, a sandbox refusal, ``raise_exception(...)``.

Templates may ``{% include %}`` only the other named templates of the same
folder (``tokenizer_config.json``'s list, ``additional_chat_templates/``), never
a path: the loader is a dict of the folder's own templates.

The environment mirrors what transformers gives a template: ``trim_blocks`` and
``lstrip_blocks``, the loop-controls extension, ``raise_exception``, a
``tojson`` that does not HTML-escape, ``strftime_now``.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from lmexport.errors import ChatTemplateError

_REPEATABLE = (str, bytes, list, tuple)


@dataclass(frozen=True)
class TemplateLimits:
    seconds: float = 2.0
    max_chars: int = 1_000_000


def _int_digits(value: int) -> int:
    return max(1, math.ceil(abs(value).bit_length() * 0.30103))


def _pow_digits(base: Any, exponent: Any) -> float:
    """About how many decimal digits ``base ** exponent`` has (ints only; floats overflow safely)."""
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 1 or abs(base) <= 1:
        return 0
    return exponent * math.log10(abs(base))


# Generic on purpose: `generate --chat` and `chat` both render templates, and only one has --chat.
FIX_HINT = "fix the model folder's chat template (chat_template.jinja or tokenizer_config.json)"


def _content_chars(variables: Mapping[str, Any]) -> int:
    """The characters the caller brings (message texts): the budget is on top of them, so a long
    message is measured against the model's context, not blamed on the template."""
    total = 0
    for message in variables.get("messages") or ():
        if isinstance(message, Mapping):
            total += sum(len(v) for v in message.values() if isinstance(v, str))
    return total


class _Budget:
    def __init__(self, limits: TemplateLimits, allowance: int = 0):
        self.limits = limits
        self.allowance = allowance
        self.max_chars = limits.max_chars + 2 * allowance    # the messages, and a template that quotes them
        self.deadline = time.monotonic() + limits.seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(f"the chat template ran longer than {self.limits.seconds:g} s",
                                    hint="the template loops too long; " + FIX_HINT)

    def check_call(self, args, kwargs, format_string: str | None) -> None:
        """Before a call: no int argument (a width, a count) and no format width above the limit."""
        self.tick()
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and value > self.max_chars:
                self.size(value, "an argument")      # center(4000000000), indent(...), ...
        if format_string is not None:
            self.size(_format_width(format_string, ()), "a formatted string")

    def check_format(self, obj, attribute) -> None:
        """Before ``obj.attribute``: a string's ``format`` may not ask for widths over the limit."""
        self.tick()
        if isinstance(obj, str) and attribute in ("format", "format_map"):   # "{:0400000000}".format(1)
            self.size(_format_width(obj, ()), "a formatted string")

    def checked(self, result):
        if isinstance(result, _REPEATABLE):
            self.size(len(result), "a value")
        return result

    def size(self, n: float, what: str) -> None:
        if n > self.max_chars:
            raise ChatTemplateError(f"the chat template would build {what} of about {n:.3g} characters, "
                                    f"over the limit of {self.limits.max_chars:,}"
                                    + (f" (plus twice the messages' {self.allowance:,})" if self.allowance else ""),
                                    hint=FIX_HINT)


def _environment(budget: _Budget, templates: Mapping[str, str]):
    from jinja2 import DictLoader, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%", "+"})

        def call_binop(self, context, operator, left, right):
            budget.tick()
            if operator == "**":
                budget.size(_pow_digits(left, right), "a number")
            elif operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, _REPEATABLE) and isinstance(n, int):
                        budget.size(len(seq) * n, "a sequence")
                if isinstance(left, int) and isinstance(right, int):
                    budget.size(_int_digits(left) + _int_digits(right), "a number")
            elif operator == "+" and isinstance(left, _REPEATABLE) and isinstance(right, _REPEATABLE):
                budget.size(len(left) + len(right), "a sequence")
            elif operator == "%" and isinstance(left, str):
                budget.size(_format_width(left, right), "a string")
            result = super().call_binop(context, operator, left, right)
            if isinstance(result, _REPEATABLE):
                budget.size(len(result), "a sequence")
            return result

        def call(self, __context, __obj, *args, **kwargs):  # every function and method call
            budget.check_call(args, kwargs, None)
            return budget.checked(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj, attribute):
            budget.check_format(obj, attribute)
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):    # x["format"] falls back to the attribute
            budget.check_format(obj, argument)
            return super().getitem(obj, argument)

    def raise_exception(message):   # what Hugging Face templates call to reject a conversation
        raise ChatTemplateError(f"the chat template rejects this conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                             loader=DictLoader(dict(templates)))
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = tojson
    # Filters are called directly by the compiled template, not through ``call``: guard each one.
    env.filters = {name: _guarded(f, budget, format_filter=name == "format") for name, f in env.filters.items()}
    return env, TemplateError


def _guarded(f, budget: "_Budget", *, format_filter: bool):
    import functools

    @functools.wraps(f)         # keeps jinja_pass_arg (pass_context / pass_environment ...)
    def filter_(*args, **kwargs):
        budget.check_call(args, kwargs, next((a for a in args if isinstance(a, str)), None) if format_filter
                          else None)
        return budget.checked(f(*args, **kwargs))
    return filter_


def _format_width(fmt: str, args: Any) -> int:
    """An upper bound of the length of ``fmt % args`` or ``fmt.format(...)``: every number in a
    conversion (widths, precisions), plus the text and the arguments."""
    import re

    specs = re.findall(r"%[-+ #0-9.*]*[a-zA-Z%]|\{[^{}]*\}", fmt)
    widths = sum(int(n) for spec in specs for n in re.findall(r"\d+", spec))
    values = args if isinstance(args, tuple) else (args,)
    return len(fmt) + widths + sum(len(v) if isinstance(v, str) else 24 for v in values)


class _Alarm:
    """SIGALRM after ``seconds`` in the main thread (interrupts a loop that calls nothing); a no-op in
    other threads and while the program has a real-time timer of its own running (it is left alone)."""

    def __init__(self, budget: _Budget):
        self.budget = budget
        self.active = (threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
                       and signal.getitimer(signal.ITIMER_REAL)[0] == 0)

    def __enter__(self):
        if self.active:
            def on_alarm(signum, frame):
                self.budget.deadline = 0.0
                self.budget.tick()
            self.previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.budget.limits.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def render_chat_template(template: str, variables: Mapping[str, Any], *,
                         named: Mapping[str, str] | None = None,
                         limits: TemplateLimits = TemplateLimits()) -> str:
    """``template`` rendered with ``variables`` (messages, add_generation_prompt, special tokens)."""
    budget = _Budget(limits, _content_chars(variables))
    parts: list[str] = []
    total = 0
    with _Alarm(budget):
        env, TemplateError = _environment(budget, named or {})
        try:
            compiled = env.from_string(template)
            for chunk in compiled.generate(**variables):
                total += len(chunk)
                budget.size(total, "a rendered text")
                budget.tick()
                parts.append(chunk)
        except ChatTemplateError:
            raise
        except TemplateError as exc:   # syntax errors, SecurityError (the sandbox said no), missing includes
            raise ChatTemplateError(f"the chat template fails: {' '.join(str(exc).split())[:200]}",
                                    hint=FIX_HINT) from exc
        except (MemoryError, RecursionError, OverflowError) as exc:
            raise ChatTemplateError(f"the chat template exhausts a resource ({type(exc).__name__})",
                                    hint=FIX_HINT) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as exc:
            raise ChatTemplateError(f"the chat template fails: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]}",
                                    hint=FIX_HINT) from exc
    return "".join(parts)


def context_full_hint(messages: list[dict]) -> str:
    """What to do when a turn does not fit: /reset helps only if earlier turns take the room."""
    if any(m["role"] == "assistant" for m in messages):
        return "type /reset to start a new chat, or send a shorter message"
    return "send a shorter message, or lower --max-new-tokens"
