"""`lmforge chat MODEL`: talk to a decoder in the terminal, through its own chat template, replies streamed."""
from __future__ import annotations

import argparse
import sys

from . import Command, add_device_arguments

EXAMPLES = """examples:
  lmforge chat SmolLM2-135M-Instruct.Q4_1.gguf                   # a GGUF file, its own template
  lmforge chat runs/sft/final --system "Answer in one word." --temperature 0
  printf 'Hi!\\nWhat is 2+2?\\n' | lmforge chat model.gguf --temperature 0   # one user message a line

In the chat: /reset forgets the conversation (the --system message stays), /exit or Ctrl-D ends it, Ctrl-C stops
the reply being written."""

HELP_LINE = "/reset forgets the conversation, /exit or Ctrl-D ends it, Ctrl-C stops a reply"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The chat command's arguments: the model, a system message, sampling like generate."""
    p.add_argument("model", help="a decoder: a model directory, a Hugging Face checkpoint directory or a .gguf file")
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    p.add_argument("--template", default=None, metavar="FILE",
                   help="a Jinja chat template file to use instead of the model's own")
    p.add_argument("--max-new-tokens", type=int, default=512, help="the longest reply, in tokens (default 512)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Load the model, then read user messages (a prompt on a terminal, one per line from a pipe) and answer."""
    from ...errors import ModelDirError
    from ...infer.generate import SamplingConfig
    from ...infer.packed import packed_linears
    from ...modeldir import load_model_dir

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                              args.repetition_penalty, seed=args.seed)
    sampling.check()  # before loading: a refused option costs nothing
    template = _read_template(args.template) if args.template else None
    bundle = load_model_dir(args.model, args.device, args.dtype)
    if not bundle.is_causal:
        raise ModelDirError(f"'{args.model}' is a {bundle.config.arch} encoder or classifier: lmforge chat needs a "
                            "decoder (gpt, llama); use fill-mask or classify for this model")
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_line_editing()
        source = "the model's own" if template or bundle.meta.get("chat_template") else "built-in ChatML"
        print(f"chatting with {args.model}: {describe(bundle)}; {source} template", file=sys.stderr)
        print(*faster(bundle), HELP_LINE, sep="\n", file=sys.stderr)
    conversation = Conversation(bundle, sampling, args.system, template)
    with packed_linears(bundle.model, 1):  # once for the session, not again for every reply
        for line in _user_lines(interactive):
            command = line.strip()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                conversation.reset()
                if interactive:
                    print("(conversation forgotten)", file=sys.stderr)
                continue
            if command:
                conversation.answer(line)
    return 0


class Conversation:
    """The history of one chat and the model that answers in it; each reply streams to stdout."""

    def __init__(self, bundle, sampling, system: str | None, template: str | None):
        from ...infer.prompt_cache import PromptCache

        self.bundle, self.sampling, self.system, self.template = bundle, sampling, system, template
        self.prompt_cache = PromptCache()  # each reply prefills only the new turn
        self.reset()

    def reset(self) -> None:
        """Forget every turn but the system message."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def answer(self, text: str) -> None:
        """Add the user's message, stream the reply and keep it; Ctrl-C drops the turn and keeps chatting."""
        from ...infer.chat import chat_reply

        self.messages.append({"role": "user", "content": text})
        self._fit_context()

        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        try:
            reply = chat_reply(self.bundle, self.messages, self.sampling, template=self.template, on_text=show,
                               prompt_cache=self.prompt_cache)
        except KeyboardInterrupt:
            self.messages.pop()
            print("\n(reply stopped; that turn is forgotten)", file=sys.stderr)
            return
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.messages.append({"role": "assistant", "content": reply.text})

    def _fit_context(self) -> None:
        """Drop the oldest turns (never the system message or the newest question) until the prompt leaves room
        for a reply in the model's context."""
        from ...infer.chat import chat_prompt

        context = getattr(self.bundle.model, "context_length", None)
        if not context:
            return
        room = context - min(self.sampling.max_new_tokens, context // 2)
        dropped = 0
        while True:
            ids, _ = chat_prompt(self.bundle, self.messages, self.template)
            first = 1 if self.system else 0
            if len(ids) <= room or len(self.messages) - first <= 1:
                break
            del self.messages[first:first + 2]  # a user message and its reply
            dropped += 1
        if dropped:
            print(f"(the conversation outgrew the context of {context} tokens: forgot its {dropped} oldest "
                  "exchange(s))", file=sys.stderr)


def describe(bundle) -> str:
    """What answers: the architecture and size, the weights' dtype and device, a quantization step."""
    from ...compress import find_step
    from ...models import count_parameters

    weight = next(p for p in bundle.model.parameters() if p.is_floating_point())
    step = find_step(bundle.meta, "quantize")
    return (f"{bundle.config.arch}, {count_parameters(bundle.model) / 1e6:.1f}M parameters, "
            f"{str(weight.dtype).removeprefix('torch.')} on {weight.device.type}"
            + (f", {step.get('method')}" if step else ""))


def faster(bundle) -> list[str]:
    """A line saying where a faster chat is, for float32 weights on a CPU that runs bf16 well; else none."""
    import torch

    from ...infer.packed import packable_dtypes

    weight = next(p for p in bundle.model.parameters() if p.is_floating_point())
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.bfloat16 in packable_dtypes():
        return ["(faster on this CPU: --dtype bfloat16, or lmforge quantize MODEL DIR --method weight-int4)"]
    return []


def _user_lines(interactive: bool):
    """User messages: prompted on a terminal (until /exit or Ctrl-D), else one per line of stdin."""
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    while True:
        try:
            yield input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as shells do
            print(file=sys.stderr)


def _read_template(path: str) -> str:
    from ...infer.chat_template import compile_template

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the chat template '{path}': {error}") from None
    compile_template(text)  # a syntax error is named now, not after the model has loaded
    return text


def _enable_line_editing() -> None:
    try:
        import readline  # noqa: F401  (arrow keys and history in input())
    except ImportError:
        pass


COMMAND = Command("chat", "Chat with a decoder in the terminal, through its chat template (streamed).", EXAMPLES,
                  add_arguments, run)
