"""HF tokenizers read their special tokens, eos ids and chat template from their files,
checked against `transformers` itself: the real SmolLM2-135M-Instruct tokenizer, and
small tokenizer directories written here in the layouts real models use."""

import dataclasses
import json

import pytest

from jaxrl_reason.data.chat_template import ChatTemplateError
from jaxrl_reason.data.prompts import PromptFormat, prompt_format
from jaxrl_reason.data.tokenizer import HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "hello world",
    "Hello, World!",
    " leading space",
    "trailing space ",
    "two  spaces and\ttab",
    "line one\nline two\n\nline four",
    "\n",
    "",
    "1234567890 + 987 = 99999",
    "3.14159, -2e10, 1/3",
    "Ünïcödé: café, naïve, Straße",
    "中文测试 日本語 한국어",
    "emoji 🙂🚀 and symbols ∑∫√",
    "Q: Tom has 3 apples.\nA: 3 + 4 = <<3+4=7>>7\n#### 7",
    "<|im_start|>user\nhi<|im_end|>",
    "text <|im_end|> more text",
    "<|endoftext|>",
    "<s> and </s> are plain text here",
    "code: def f(x):\n    return x ** 2",
    "a" * 50,
]

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 12 * 7?"},
    ],
    [{"role": "user", "content": "Natalia sold clips to 48 of her friends."}],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4.\n#### 4"},
        {"role": "user", "content": "And 3 + 3?"},
    ],
]


def _hf_ids(hf, text):
    return hf(text).input_ids


# ------------------------------------------------------------------ the real SmolLM2


@pytest.fixture(scope="module")
def smollm2(smollm2_hf_dir):
    return load_tokenizer(smollm2_hf_dir), transformers.AutoTokenizer.from_pretrained(
        smollm2_hf_dir
    )


def test_smollm2_ids_equal_transformers(smollm2):
    tok, hf = smollm2
    for text in TEXTS:
        assert tok.encode(text) == _hf_ids(hf, text), text
    assert tok.encode_batch(TEXTS) == [_hf_ids(hf, t) for t in TEXTS]
    assert tok.encode("hello", add_bos=True)[0] == tok.bos_id  # forced, as before


def test_smollm2_special_tokens_are_read_not_guessed(smollm2, smollm2_hf_dir):
    tok, hf = smollm2
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    assert tok.token_text(tok.eos_id) == "<|im_end|>"  # the end of turn, not <|endoftext|>
    generation = json.loads((smollm2_hf_dir / "generation_config.json").read_text())
    ends = generation["eos_token_id"]
    assert set([ends] if isinstance(ends, int) else ends) <= set(tok.eos_ids)
    assert tok.eos_ids[0] == tok.eos_id and tok.vocab_size == len(hf)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert tok.decode(ids) == "user\nhi"  # bos and eos text are dropped


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_equals_transformers(smollm2, add_generation_prompt):
    tok, hf = smollm2
    for messages in CONVERSATIONS:
        text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        want = hf.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        assert text == want
        want_ids = hf.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, return_dict=False
        )
        assert tok.encode(text) == list(want_ids)


def test_smollm2_chat_prompt_format(smollm2):
    tok, hf = smollm2
    question = "Weng earns $12 an hour {in braces}. How much?"
    for system in (None, "Solve the problem."):
        fmt = prompt_format(kind="chat", tokenizer=tok, system=system, instruction="End: ####")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": f"{question}\n\nEnd: ####"})
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert fmt.format(question) == want
        assert tok.encode(fmt.format(question)) == list(
            hf.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        )
        assert "<|im_end|>" in fmt.stop_sequences and "\nQ:" not in fmt.stop_sequences
        # run.json keeps it as a plain dict of strings
        assert PromptFormat(**dataclasses.asdict(fmt)) == fmt


# ------------------------------------------------------------------ synthetic directories

SPECIALS = ["<s>", "</s>", "<pad>", "<unk>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>"]


def _tokenizer_json(path, post=None):
    """A small byte-level BPE with SPECIALS as ids 0..6, and `post` as post_processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 3, trainer)
    if post is not None:
        single = " ".join(post)
        ids = [(t, SPECIALS.index(t)) for t in dict.fromkeys(post) if t != "$A"]
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=ids)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path


def _write(path, name, data):
    (path / name).write_text(data if isinstance(data, str) else json.dumps(data))


def _added(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False}


LLAMA3_TEMPLATE = (
    "{{- bos_token }}{% set ns = namespace(turns=0) %}"
    "{%- for message in messages %}{% set ns.turns = ns.turns + 1 %}"
    "{{- 'role:' + message['role'] + '\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'role:assistant\\n\\n' }}{%- endif %}"
    "{{- '' if ns.turns else raise_exception('empty') }}"
)

LAYOUTS = {
    # Llama-2: the post_processor adds the BOS (AddedToken dicts in the config)
    "llama2": dict(
        post=["<s>", "$A"],
        config={"bos_token": _added("<s>"), "eos_token": _added("</s>"), "add_bos_token": True},
    ),
    # transformers 5 ignores add_bos_token beside a tokenizer.json: its post_processor rules
    "add_bos_false": dict(
        post=["<s>", "$A"], config={"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}
    ),
    # ... and with no post_processor, nothing is added whatever the config says
    "add_both": dict(
        config={
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "add_bos_token": True,
            "add_eos_token": True,
        }
    ),
    # Llama-3: the post_processor adds the BOS, several eos ids, no pad token
    "llama3": dict(
        post=["<s>", "$A"],
        config={"bos_token": "<s>", "eos_token": "<|eot_id|>"},
        generation={"eos_token_id": [5, 4]},
    ),
    # Qwen: no BOS at all, an explicit pad token
    "qwen": dict(
        config={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|end_of_text|>"},
        generation={"eos_token_id": [6, 5]},
    ),
    # a legacy special_tokens_map.json overrides a config without added_tokens_decoder
    "legacy_map": dict(
        post=["<s>", "$A"],
        config={"bos_token": "<s>", "eos_token": "<unk>"},
        special_map={"eos_token": {"content": "</s>", "lstrip": False}, "pad_token": "<pad>"},
    ),
    # a tokenizer.json alone whose post_processor names both ends
    "alone": dict(post=["<s>", "$A", "</s>"]),
}


def _layout(tmp_path, name):
    spec = LAYOUTS[name]
    path = _tokenizer_json(tmp_path / name, spec.get("post"))
    if "config" in spec:
        _write(path, "tokenizer_config.json", spec["config"])
    if "generation" in spec:
        _write(path, "generation_config.json", spec["generation"])
    if "special_map" in spec:
        _write(path, "special_tokens_map.json", spec["special_map"])
    return path


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_match_transformers(tmp_path, name):
    path = _layout(tmp_path, name)
    tok, hf = HFTokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    for text in TEXTS:
        if text.startswith("<s>") and tok.encode("")[:1] == [0]:
            # Already starts with the BOS the tokenizer adds: kept single, as in a chat.
            assert tok.encode(text) == hf(text, add_special_tokens=False).input_ids
        else:
            assert tok.encode(text) == _hf_ids(hf, text), text
    if hf.bos_token_id is not None:
        assert tok.bos_id == hf.bos_token_id
    if hf.eos_token_id is not None:
        assert tok.eos_id == hf.eos_token_id
    want_pad = hf.pad_token_id if hf.pad_token_id is not None else tok.eos_id
    assert tok.pad_id == want_pad  # no pad token: pad = eos
    generation = LAYOUTS[name].get("generation", {}).get("eos_token_id", [])
    assert tok.eos_ids == tuple(dict.fromkeys([tok.eos_id, *generation]))


def test_layout_ids(tmp_path):
    llama3 = HFTokenizer(_layout(tmp_path, "llama3"))
    assert (llama3.bos_id, llama3.eos_ids, llama3.pad_id) == (0, (4, 5), 4)
    assert llama3.decode(llama3.encode("hi there") + [5, 4]) == "hi there"
    qwen = HFTokenizer(_layout(tmp_path, "qwen"))
    assert (qwen.bos_id, qwen.eos_ids, qwen.pad_id) == (None, (6, 5), 5)
    assert qwen.encode("hi", add_eos=True)[-1] == 6
    with pytest.raises(ValueError, match="no bos token to add"):
        qwen.encode("hi", add_bos=True)
    alone = HFTokenizer(_layout(tmp_path, "alone"))
    assert (alone.bos_id, alone.eos_ids) == (0, (1,))
    assert alone.encode("hi", add_eos=True).count(1) == 1  # its post_processor's eos is enough
    assert alone.encode("hi", add_bos=False) == alone.encode("hi")[1:-1]


def test_explicit_arguments_override_the_files(tmp_path):
    path = _layout(tmp_path, "llama3")
    tok = HFTokenizer(path, eos_token=["<|end_of_text|>", "</s>"], pad_token="<pad>", add_bos=False)
    assert (tok.eos_ids, tok.pad_id) == ((5, 1), 2)
    assert tok.encode("hi") == tok.encode("hi", add_bos=False)


def test_a_chat_template_renders_as_transformers_does_without_a_second_bos(tmp_path):
    path = _layout(tmp_path, "llama3")
    config = {**LAYOUTS["llama3"]["config"], "chat_template": LLAMA3_TEMPLATE}
    _write(path, "tokenizer_config.json", config)
    tok, hf = HFTokenizer(path), transformers.AutoTokenizer.from_pretrained(path)
    padded = [{"role": "user", "content": "  What is 1 + 1?\n"}]  # the template trims it
    for messages in [*CONVERSATIONS, padded]:
        for generation_prompt in (True, False):
            text = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt)
            kwargs = {"add_generation_prompt": generation_prompt}
            assert text == hf.apply_chat_template(messages, tokenize=False, **kwargs)
            assert text.startswith("<s>") and tok.encode(text).count(0) == 1
            want = hf.apply_chat_template(messages, return_dict=False, **kwargs)
            assert tok.encode(text) == list(want)
    fmt = prompt_format(kind="chat", tokenizer=tok)
    want = hf.apply_chat_template(
        [{"role": "user", "content": "2 + 3?"}], add_generation_prompt=True, return_dict=False
    )
    assert tok.encode(fmt.format("2 + 3?")) == list(want)
    assert fmt.stop_sequences == ("<|eot_id|>", "<|end_of_text|>")
    # chat_template.jinja (transformers 5 writes it) replaces the config's template
    _write(path, "chat_template.jinja", "{{ bos_token }}{{ messages[-1]['content'] }}")
    assert HFTokenizer(path).apply_chat_template(CONVERSATIONS[1]) == (
        transformers.AutoTokenizer.from_pretrained(path).apply_chat_template(
            CONVERSATIONS[1], tokenize=False
        )
    )


def test_template_helpers_match_transformers(tmp_path):
    template = (
        "{% for m in messages %}{{ m | tojson }}{% if loop.last %}{% break %}{% endif %}"
        "{% generation %}<{{ m['role'] }}>{% endgeneration %}{% endfor %}"
        "{{ dict(a=1) | tojson }}{{ strftime_now('%Y') }}{{ eos_token }}"
        "{% if tools is none and documents is none %}!{% endif %}\n  {% if true %}x{% endif %}"
    )
    path = _layout(tmp_path, "qwen")
    _write(path, "tokenizer_config.json", {**LAYOUTS["qwen"]["config"], "chat_template": template})
    messages = [{"role": "user", "content": "é <b>"}, {"role": "assistant", "content": None}]
    hf = transformers.AutoTokenizer.from_pretrained(path)
    assert HFTokenizer(path).apply_chat_template(messages) == hf.apply_chat_template(
        messages, tokenize=False
    )


def test_a_template_that_refuses_the_conversation_says_why(tmp_path):
    path = _layout(tmp_path, "qwen")
    template = (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ raise_exception('The first message must be a system prompt') }}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    _write(path, "chat_template.jinja", template)
    tok = HFTokenizer(path)
    with pytest.raises(ChatTemplateError, match="refused the conversation: The first message"):
        tok.apply_chat_template(CONVERSATIONS[1])
    assert tok.apply_chat_template(CONVERSATIONS[0]).startswith("You are")
    with pytest.raises(ValueError, match="does not write the question verbatim"):
        prompt_format(kind="chat", tokenizer=HFTokenizer(path, chat_template="{{ 'fixed' }}"))
    with pytest.raises(ChatTemplateError, match="not a valid jinja template"):
        HFTokenizer(path, chat_template="{% for %}").apply_chat_template(CONVERSATIONS[1])


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, r"no eos token: there is no tokenizer_config.json beside tokenizer.json.*eos_token="),
        (
            {"tokenizer_config.json": {"bos_token": "<s>"}},
            r"tokenizer_config.json: no eos_token, and no generation_config.json.*eos_token=",
        ),
        (
            {"tokenizer_config.json": {"eos_token": "<|im_end|>", "bos_token": "<bos>"}},
            r"tokenizer_config.json: bos_token '<bos>' is not a token of .*tokenizer.json",
        ),
        (
            {"tokenizer_config.json": {"eos_token": 7}},
            r"tokenizer_config.json: eos_token must be a string or an AddedToken dict",
        ),
        (
            {
                "tokenizer_config.json": {"eos_token": "</s>"},
                "generation_config.json": {"eos_token_id": [1, 9999]},
            },
            r"generation_config.json: eos_token_id 9999 is not an id of",
        ),
        (
            {"tokenizer_config.json": "{not json"},
            r"tokenizer_config.json:1:2: tokenizer_config.json is not valid JSON",
        ),
        (
            {"tokenizer_config.json": {"eos_token": "</s>", "chat_template": [{"name": "x"}]}},
            r"chat_template lists templates \['x'\] but none named 'default'",
        ),
    ],
)
def test_missing_or_bad_files_are_named(tmp_path, files, message):
    path = _tokenizer_json(tmp_path / "t")
    for name, data in files.items():
        _write(path, name, data)
    with pytest.raises(ValueError, match=message) as info:
        load_tokenizer(path)
    assert "\n" not in str(info.value)


def test_no_chat_template_is_named(tmp_path, arith_tokenizer):
    tok = HFTokenizer(_layout(tmp_path, "qwen"))
    with pytest.raises(ValueError, match="has no chat template.*chat_template="):
        tok.apply_chat_template(CONVERSATIONS[1])
    with pytest.raises(ValueError, match="has no chat template"):
        prompt_format(kind="chat", tokenizer=arith_tokenizer)
    with pytest.raises(ValueError, match="pass tokenizer="):
        prompt_format(kind="chat")


def test_a_template_without_the_bos_its_tokenizer_adds_is_flagged(tmp_path, caplog):
    tok = HFTokenizer(_layout(tmp_path, "llama3"), chat_template="{{ messages[0].content }}")
    fmt = prompt_format(kind="chat", tokenizer=tok)
    assert "does not write the BOS its tokenizer adds" in caplog.text
    assert tok.encode(fmt.format("hi"))[0] == tok.bos_id  # prompts still get the BOS
