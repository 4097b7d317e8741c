"""The quickstart's synthetic preference data and tiny model, built offline.

Pure ring: no Ray import. Used by pipelines/make_quickstart_assets.py and by the tests, which
save a model and tokenizer to a directory and load them through from_pretrained, the same path a
hub id takes.

The preference depends on the prompt: the prompt asks for a positive or a negative review, and the
chosen completion has that sentiment. Both sentiments appear as chosen and as rejected equally
often, so a model can only rank the pair right by reading the prompt.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ITEMS = (
    "lamp", "kettle", "novel", "bicycle", "jacket", "phone", "camera", "backpack", "chair", "desk",
    "blender", "guitar", "movie", "album", "restaurant", "hotel", "laptop", "watch", "umbrella", "tent",
    "printer", "sofa", "mattress", "toaster", "game", "podcast", "museum", "bakery", "scarf", "helmet",
)
NAMES = (
    "Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo",
    "Nia", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Vik", "Wen", "Xena", "Yuki", "Zoe",
)
POSITIVE = ("wonderful", "great", "excellent", "superb", "lovely", "fantastic", "delightful", "brilliant")
NEGATIVE = ("terrible", "awful", "dreadful", "poor", "horrible", "disappointing", "flimsy", "useless")
TEMPLATES = (
    "The {item} is {adj}.",
    "I think this {item} is {adj}.",
    "What a {adj} {item}!",
    "Honestly, a {adj} {item}.",
    "My {item} turned out {adj}, really {adj2}.",
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# A minimal chat template so conversational data works with the tiny model (tests, quickstart).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _review(rng: random.Random, item: str, words: tuple[str, ...]) -> str:
    adj, adj2 = rng.sample(words, 2)
    return " " + rng.choice(TEMPLATES).format(item=item, adj=adj, adj2=adj2)


def make_preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {prompt, chosen, rejected}; the chosen review's sentiment is the one asked for."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        item, name = rng.choice(ITEMS), rng.choice(NAMES)
        positive = rng.random() < 0.5
        prompt = f"{name} asks for a {'positive' if positive else 'negative'} review of the {item}."
        good, bad = (POSITIVE, NEGATIVE) if positive else (NEGATIVE, POSITIVE)
        rows.append({"prompt": prompt, "chosen": _review(rng, item, good), "rejected": _review(rng, item, bad)})
    return rows


def train_tokenizer(texts: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``; BOS/EOS/PAD as a Llama tokenizer has them."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    # Prepend BOS to every encoded text, as Llama tokenizers do (exercises TRL's BOS rule).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    rows: list[dict[str, str]],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 384,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``rows``, build a randomly initialised Llama, save both to ``out_dir``."""
    import torch  # local: keeps module import light for data-only callers

    texts = [r["prompt"] + r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` review requests in the preference rows' format (the online example's prompts)."""
    return [row["prompt"] for row in make_preference_rows(n, seed=seed)]


def sft_tiny_model(model_dir: str | Path, rows: list[dict[str, str]], out_dir: str | Path, *, steps: int = 300,
                   batch_size: int = 32, learning_rate: float = 3e-3, follow: float = 0.5, seed: int = 0) -> Path:
    """Supervised warm start for the online example: the model learns to write a review of the asked
    item after the prompt, in the asked sentiment with probability ``follow`` (the chosen text) and
    the other one otherwise (the rejected text), so its samples are reviews a judge can score and
    most of the asked sentiment is left to DPO. A warm start that follows the ask half the time
    (0.5) learns to ignore the prompt's sentiment word, and DPO then hardly moves it (100 quickstart steps: eval
    accuracy 0.55 from follow=0.5, 0.98 from follow=0.65)."""
    import torch

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(str(model_dir))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    examples = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        reply = tokenizer(row["chosen"] if rng.random() < follow else row["rejected"], add_special_tokens=False)["input_ids"]
        examples.append((prompt + reply + [tokenizer.eos_token_id], len(prompt)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, batch_size)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (ids, prompt_len) in enumerate(batch):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            labels[i, prompt_len:len(ids)] = torch.tensor(ids[prompt_len:])
            mask[i, :len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = Path(out_dir)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
