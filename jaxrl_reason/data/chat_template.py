"""A model's chat template rendered with jinja2 the way `transformers` renders it.

Chat templates are code from model repositories, so they run in jinja2's immutable
sandbox, with the environment `transformers.utils.chat_template_utils` sets up:
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, a `{% generation %}`
block (rendered as its body: we do not track assistant spans), `raise_exception`,
`strftime_now`, a `tojson` that does not escape HTML, `dict` and a `namespace` that
refuses underscore names. The special tokens (`bos_token`, `eos_token`, ...) are
template variables, as `transformers` passes them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

Message = Mapping[str, Any]


class ChatTemplateError(ValueError):
    """The template refused the conversation (its `raise_exception`) or failed to render."""


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: transformers' assistant-span marker."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """jinja2's namespace, refusing the underscore names a sandbox escape would use."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"a chat template may not set {name!r} on a namespace"
                )

    class Dict:
        """`dict(...)` and `dict.fromkeys(...)`, without the class itself."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = Dict()
    env.globals["namespace"] = Namespace
    return env.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    source: str = "the chat template",
    /,
    **variables: Any,
) -> str:
    """`messages` (dicts with "role" and "content") as the template writes them.

    `variables` (the special tokens, or template options such as Qwen3's
    `enable_thinking`) are visible to the template. Keys whose value is None are dropped
    from each message first, as `transformers` does. A template that refuses the
    conversation raises `ChatTemplateError` with its own message.
    """
    import jinja2

    if isinstance(messages, Mapping) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError(f"a message must be a dict with 'role' and 'content': {message!r}")
        chat.append({k: v for k, v in message.items() if v is not None})
    try:
        compiled = _compile(template)
        return compiled.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(
            f"{source} is not a valid jinja template (line {err.lineno}: {err.message}); "
            "fix the template or pass chat_template="
        ) from None
    except jinja2.TemplateError as err:
        raise ChatTemplateError(f"{source} refused the conversation: {err}") from None
