#!/usr/bin/env python3
"""kvbridge's native chat templates against Jinja renderings of the same templates.

The Qwen3 template is the real one (tokenizers/qwen2/qwen3_tokenizer_config.json under the models
directory), rendered with jinja2 the way Hugging Face's apply_chat_template does (trim_blocks,
lstrip_blocks, loopcontrols, tojson with ensure_ascii=False). The other families are written here
from their published layouts. Each conversation is rendered by `kvbridge chat-template` and must
match byte for byte. Exit 77 (skipped) when jinja2 is missing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import jinja2
except ImportError:
    print("jinja2 is not installed (pip install jinja2): skipped")
    sys.exit(77)

CHATML = """{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"""

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"""

LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


def conversations():
    u = lambda c: {"role": "user", "content": c}
    a = lambda c: {"role": "assistant", "content": c}
    s = lambda c: {"role": "system", "content": c}
    t = lambda c: {"role": "tool", "content": c}
    return [
        [u("Hello!")],
        [s("You are a log analyzer."), u("Summarize:\nERROR disk full\nWARN retry")],
        [u("Wie spät ist es?"), a("Es ist 12 Uhr."), u("Danke! 谢谢 🙏")],
        [s("  padded system  \n"), u("  padded user \t"), a("\n reply \n")],
        [u("2+2?"), a("<think>\nadd them\n</think>\n\n4"), u("and 3+3?"), a("<think>easy</think>6")],
        [u("q"), a("<think>\n\nreason one\n\n</think>\n\nanswer")],
        [u("run the tool"), a("calling"), t("{\"ok\": true}"), t("line \"two\"\n\tend"), a("done")],
        [t("<tool_response>x</tool_response>"), u("<tool_response>y</tool_response>"), a("<think>r</think>z")],
        [s("first"), u("u"), s("mid-conversation system"), a("ok")],
        [a("assistant first")],
        [u("")],
        [u("code:\n```python\nprint('hi')\n```\n"), a("ünïcödé — «quotes» and 😀")],
    ]


def render_jinja(source, messages, gen, extra):
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    return env.from_string(source).render(messages=messages, add_generation_prompt=gen,
                                          bos_token="<|begin_of_text|>", eos_token="", **extra)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvbridge", required=True)
    ap.add_argument("--models", required=True)
    args = ap.parse_args()
    models = os.environ.get("KVBRIDGE_MODELS") or args.models
    qwen3_cfg = os.path.join(models, "tokenizers", "qwen2", "qwen3_tokenizer_config.json")
    templates = [("chatml", CHATML, None), ("qwen2.5", QWEN25, None), ("llama3", LLAMA3, None),
                 ("llama3.1", LLAMA31, None)]
    if os.path.exists(qwen3_cfg):
        with open(qwen3_cfg, encoding="utf-8") as f:
            templates.append(("qwen3", json.load(f)["chat_template"], qwen3_cfg))
    else:
        print(f"note: {qwen3_cfg} missing, the real Qwen3 template is not checked")

    checked, failures = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source, cfg in templates:
            # kvbridge must recognize the family from the source itself.
            tfile = cfg or os.path.join(tmp, f"{name}.jinja")
            if cfg is None:
                with open(tfile, "w", encoding="utf-8") as f:
                    f.write(source)
            variants = [(True, {}, []), (False, {}, ["--no-generation-prompt"])]
            if name == "qwen3":
                variants.append((True, {"enable_thinking": False}, ["--no-thinking"]))
            if name == "llama3.1":
                variants.append((True, {"date_string": "01 Jan 2026"}, ["--date", "01 Jan 2026"]))
            for conv in conversations():
                if name == "llama3" and any(m["role"] == "tool" for m in conv):
                    continue  # no tool role in Llama 3.0's format
                mfile = os.path.join(tmp, "messages.json")
                with open(mfile, "w", encoding="utf-8") as f:
                    json.dump(conv, f, ensure_ascii=False)
                for gen, extra, flags in variants:
                    want = render_jinja(source, conv, gen, extra)
                    got = subprocess.run([args.kvbridge, "chat-template", "--template", tfile, "--messages", mfile]
                                         + flags, capture_output=True, check=False)
                    if got.returncode != 0:
                        failures.append(f"{name}: exit {got.returncode}: {got.stderr.decode()}")
                        continue
                    checked += 1
                    if got.stdout.decode("utf-8") != want:
                        failures.append(f"{name} gen={gen} {extra} {conv!r}:\n want {want!r}\n  got {got.stdout.decode()!r}")
    for f in failures:
        print("FAIL", f)
    print(f"{checked} renderings compared, {len(failures)} failures")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
