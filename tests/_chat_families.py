"""Real chat tokenizers (tests/fixtures/tokenizers, SOURCES.md) on tiny models of their architecture,
and preference rows written to hit the prompt/completion boundary of each."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
FAMILIES = ("qwen3", "llama3", "phi3", "mistral")


def unpack_tokenizer(family: str, out: Path) -> Path:
    """tokenizer.json (stored xz-compressed) and tokenizer_config.json as the hub repo lays them out."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_bytes(lzma.decompress((FIXTURES / family / "tokenizer.json.xz").read_bytes()))
    shutil.copy(FIXTURES / family / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def build_family_model(family: str, out: Path) -> str:
    """A 1-layer model of the family's architecture (vocab = the tokenizer's) saved with its tokenizer
    files, so both pipelines load it through from_pretrained as they would a hub id."""
    import transformers
    from transformers import AutoTokenizer

    unpack_tokenizer(family, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config_class = {"qwen3": transformers.Qwen3Config, "llama3": transformers.LlamaConfig,
                    "phi3": transformers.Phi3Config, "mistral": transformers.MistralConfig}[family]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return str(out)


def _hh(*turns: str) -> str:
    """An Anthropic HH transcript: alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


# Plain strings: spaces on either side of the boundary, merges across it (mid-word, digits,
# punctuation, newlines), non-ASCII, a completion that already ends with EOS text ({eos}).
STANDARD = [
    ("The capital of France is", " Paris.", " Lyon."),
    ("Answer: ", "Blue", "Green"),
    ("Question: what is 2+2?\nAnswer:", " 4", " 5"),
    ("The quick bro", "wn fox jumps.", "wn dog sleeps."),
    ("Year 20", "24 was a leap year.", "23 was not."),
    ("Say hello", ", world!", "! Hi."),
    ("She said: \"I don", "'t know.\"", "'t care.\""),
    ("Title:\n", "\nBody text here.", "\n\nAnother body."),
    ("Caf", "é au lait", "és du coin"),
    ("Emoji time:", " 🦙 llama", "🐪 camel"),
    ("List:", "\n- one\n- two", " one, two"),
    ("Indent:\n", "    def f(x):\n        return x", "\tdef g(): pass"),
    ("Two  spaces", "  before", " one"),
    ("Ends with EOS", " done{eos}", " not done"),
    ("Nothing special", "plain", "other"),
    ("Multi\n\nline prompt\n\n", "Reply after blank line.", "  Indented reply."),
]

CONVERSATIONAL = [
    ([{"role": "user", "content": "What color is the sky?"}],
     [{"role": "assistant", "content": "It is blue."}], [{"role": "assistant", "content": "It is green."}]),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
     [{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "8"}]),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Tell me a joke."}],
     [{"role": "assistant", "content": "Why did the chicken cross the road?"}],
     [{"role": "assistant", "content": " No."}]),
    ([{"role": "user", "content": "  leading and trailing spaces  "}],
     [{"role": "assistant", "content": "  spaced answer  "}], [{"role": "assistant", "content": "\nnewline first"}]),
    ([{"role": "user", "content": "Solve 12*3."}],
     [{"role": "assistant", "content": "<think>\n12*3 = 36.\n</think>\n\n36"}],
     [{"role": "assistant", "content": "<think>\nGuess.\n</think>\n\n38"}]),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<think>\nearlier\n</think>\n\nA1"},
      {"role": "user", "content": "Q2"}],
     [{"role": "assistant", "content": "A2"}], [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nB2"}]),
    ([{"role": "user", "content": "Écris un mot."}],
     [{"role": "assistant", "content": "Café"}], [{"role": "assistant", "content": "Thé 🍵"}]),
    ([{"role": "system", "content": "Answer in lists."}, {"role": "user", "content": "Two fruits?"}],
     [{"role": "assistant", "content": "- apple\n- pear"}], [{"role": "assistant", "content": "apple, pear"}]),
]

IMPLICIT = [
    (_hh("How are you?", "I am fine, thanks."), _hh("How are you?", "It's none of your business.")),
    (_hh("Give me a number.", "Forty-two."), _hh("Give me a number.", "Four.")),
    (_hh("Hi", "Hello there"), _hh("Hi", "Go away")),
    (_hh("Write a word", "Sure: apple"), _hh("Write a word", "Sure: apricot")),
    (_hh("Count", "123456"), _hh("Count", "123789")),
    (_hh("Hi", "Hey", "What's up?", "Not much, you?"), _hh("Hi", "Hey", "What's up?", "Nothing.")),
    (_hh("Is it?", "Yes."), _hh("Is it?", "Yes!")),
    (_hh("Spaces", "  two spaces"), _hh("Spaces", " one space")),
    (_hh("Ünïcödé?", "Ja, gerne."), _hh("Ünïcödé?", "Jawohl.")),
    (_hh("Newline", "line one\nline two"), _hh("Newline", "line one\n\nline three")),
]

IMPLICIT_MESSAGES = [  # UltraFeedback-binarized: the prompt turns are inside chosen / rejected
    ([{"role": "user", "content": "Best pet?"}, {"role": "assistant", "content": "A cat."}],
     [{"role": "user", "content": "Best pet?"}, {"role": "assistant", "content": "A rock."}]),
    ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Rate me."},
      {"role": "assistant", "content": "10/10"}],
     [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Rate me."},
      {"role": "assistant", "content": "2/10"}]),
]

SHAREGPT = [  # LLaMA-Factory's DPO demo layout
    {"conversations": [{"from": "human", "value": "Translate 'cat' to French."}],
     "chosen": {"from": "gpt", "value": "Chat."}, "rejected": {"from": "gpt", "value": "Chien."}},
    {"conversations": [{"from": "system", "value": "You are a poet."}, {"from": "human", "value": "A haiku?"}],
     "chosen": {"from": "gpt", "value": "Old pond, a frog jumps."}, "rejected": {"from": "gpt", "value": "No."}},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}],
     "chosen": {"from": "gpt", "value": "Goodbye!"}, "rejected": {"from": "gpt", "value": "Whatever"}},
]


def has_system(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "system" for m in messages)
