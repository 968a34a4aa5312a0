#!/usr/bin/env python3
"""Builds tests/fixtures/chat_templates.json, the expectations of tests/test_chat_template.cpp.

Each case renders one conversation with a model family's published chat template
(the Jinja text of its tokenizer_config.json) through Hugging Face transformers'
apply_chat_template, on one of the tokenizer fixtures (tests/fixtures/tokenizers/),
and records the rendered text and the token ids (tokenize=True). halo's hand-written
renderers (src/text/chat_template.cpp) must give the same text and ids.

The templates (written out below):
  llama3.0   Meta-Llama-3-8B-Instruct
  llama3.2   Llama-3.2-1B-Instruct (date_string passed as "26 Jul 2024", the template's
             own fallback, which halo uses: transformers would otherwise fill in today)
  smollm2    SmolLM2-135M-Instruct (from its GGUF's tokenizer.chat_template): ChatML with a
             default system message
  qwen2      Qwen2-Instruct: ChatML with a default system message
  llama2     Llama-2-7b-chat-hf
  mistral    Mistral-7B-Instruct-v0.1 (which refuses system messages: those cases are left out)
  mistral3   Mistral-7B-Instruct-v0.3 style ("[INST] ...[/INST] answer</s>", system message
             before the last user message), as later Mistral templates write it
  mistral3-last  the same as Mistral-7B-Instruct-v0.3 publishes it: the system message only
             when the last message is a user's (loop.last)

Setup (a virtual environment; pip reaches PyPI):
  python3 -m venv /tmp/chatvenv && /tmp/chatvenv/bin/pip install transformers jinja2 tokenizers
  /tmp/chatvenv/bin/python scripts/make_chat_fixtures.py
"""
import json
import os

from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")

LLAMA30 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")

QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

MISTRAL3 = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if (message == user_messages[-1]) and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- endif %}
{%- endfor %}"""

# Mistral-7B-Instruct-v0.3 as published: the system message only when the last message is a user's.
MISTRAL3_LAST = MISTRAL3.replace("(message == user_messages[-1]) and system_message", "loop.last and system_message")

# (name, family, tokenizer fixture, template)
TEMPLATES = [
    ("llama3.0", "llama3", "llama3", LLAMA30),
    ("llama3.2", "llama3", "llama3", LLAMA32),
    ("smollm2", "chatml", "smollm", SMOLLM2),
    ("qwen2", "chatml", "qwen2", QWEN2),
    ("llama2", "llama2", "mistral", LLAMA2),
    ("mistral", "mistral", "mistral", MISTRAL),
    ("mistral3", "mistral", "mistral-v3", MISTRAL3),
    ("mistral3-last", "mistral", "mistral-v3", MISTRAL3_LAST),
]


def m(role, content):
    return {"role": role, "content": content}


# (messages, add_generation_prompt); every family takes these (roles alternate).
CONVERSATIONS = [
    ([m("user", "Hi there!"), m("assistant", "Hello! How can I help you today?")], False),
    ([m("system", "You are a terse assistant."), m("user", "What is 2+2?"), m("assistant", "4"),
      m("user", "And 3 + 3?"), m("assistant", "  It is 6.\n")], False),
    ([m("user", "Translate to German:\ncafé, naïve, 12 apples")], True),
    ([m("system", "  Answer in SQL.  "), m("user", "Count the rows of t.")], True),
    ([m("user", "  spaces around  "), m("assistant", "\n\nSELECT COUNT(*) FROM t;\n"),
      m("user", "Thanks 😀"), m("assistant", "You're welcome — 👍")], False),
]


def main():
    cases = []
    for name, family, fixture, template in TEMPLATES:
        d = os.path.join(FIXTURES, "tokenizers", fixture)
        config = {}
        if os.path.exists(os.path.join(d, "tokenizer_config.json")):
            with open(os.path.join(d, "tokenizer_config.json")) as f:
                config = json.load(f)
        specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token") if config.get(k)}
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), **specials)
        tok.chat_template = template
        for messages, gen in CONVERSATIONS:
            if name == "mistral" and messages[0]["role"] == "system":
                continue  # the v0.1 template refuses a system message
            kwargs = {"date_string": "26 Jul 2024"}
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, **kwargs)
            ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, **kwargs)
            if not isinstance(ids, list):  # a BatchEncoding in newer transformers
                ids = ids["input_ids"]
            assert ids == tok(text, add_special_tokens=False)["input_ids"]
            cases.append({"name": name, "family": family, "tokenizer": fixture, "chat_template": template,
                          "messages": messages, "add_generation_prompt": gen, "text": text, "ids": ids})
    out = os.path.join(FIXTURES, "chat_templates.json")
    with open(out, "w") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
