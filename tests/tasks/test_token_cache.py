"""The text-plan cache is keyed by what the tokenizer is, not only its class and context length:
two tokenizers that tokenize differently never share a plan; equal tokenizers still do."""

from __future__ import annotations

import gzip

import open_clip
import pytest
import torch

from evalkit.data.preprocess import PreprocessCfg
from evalkit.models.family import LoadedModel
from evalkit.tasks.text import text_plan, tokenizer_identity

TEXTS = ["a photo of a dog.", "a photo of a cat.", "an origami crane", "a photo of a dog.", "zebra"]


def _lm(tokenizer, context_length: int = 77, pooling: str = "eot") -> LoadedModel:
    return LoadedModel(model=torch.nn.Identity(), family="clip", arch="test", preprocess=PreprocessCfg(),
                       tokenizer=tokenizer, context_length=context_length, text_pooling=pooling)


def _tokens(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    plan = text_plan(lm, texts)
    return plan.tokens[plan.slot]


def _small_bpe(tmp_path, n_merges: int = 2000):
    """CLIP's BPE with only its first merges: the same class and context length, another vocabulary."""
    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    path = tmp_path / "small_bpe.txt.gz"
    path.write_bytes(gzip.compress("\n".join(lines[: n_merges + 1]).encode("utf-8")))
    return open_clip.SimpleTokenizer(bpe_path=str(path), context_length=77)


def _hf_tokenizer(tmp_path, name: str, words: list[str], context_length: int = 16):
    """open_clip's HFTokenizer over a local word-level vocabulary (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / name
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return open_clip.tokenizer.HFTokenizer(str(folder), context_length=context_length)


def test_same_class_and_context_length_other_vocabulary_gets_its_own_tokens(tmp_path):
    full, small = open_clip.SimpleTokenizer(context_length=77), _small_bpe(tmp_path)
    assert not torch.equal(full(TEXTS), small(TEXTS))
    assert torch.equal(_tokens(_lm(full), TEXTS), full(TEXTS))
    assert torch.equal(_tokens(_lm(small), TEXTS), small(TEXTS))  # before: full's cached plan
    assert tokenizer_identity(full) != tokenizer_identity(small)


def test_two_hf_tokenizers_with_other_vocabularies_do_not_share(tmp_path):
    words = sorted({w for t in TEXTS for w in t.replace(".", " .").split()})
    a = _hf_tokenizer(tmp_path, "a", words)
    b = _hf_tokenizer(tmp_path, "b", list(reversed(words)))
    assert not torch.equal(a(TEXTS), b(TEXTS))
    for tok in (a, b, open_clip.SimpleTokenizer(context_length=16)):
        assert torch.equal(_tokens(_lm(tok, 16, "mean"), TEXTS), tok(TEXTS))
    assert tokenizer_identity(a) == tokenizer_identity(_hf_tokenizer(tmp_path, "a2", words))


def test_opaque_tokenizers_are_keyed_by_identity():
    """Plain functions (e.g. closures over a vocabulary) have no readable content: never shared."""
    def make(offset: int):
        def tokenize(texts: list[str]) -> torch.Tensor:
            return torch.tensor([[len(t) % 50 + offset, 60, 0] for t in texts])
        return tokenize

    one, two = make(1), make(2)
    assert torch.equal(_tokens(_lm(one, 3), TEXTS), one(TEXTS))
    assert torch.equal(_tokens(_lm(two, 3), TEXTS), two(TEXTS))


def test_equal_tokenizers_still_share_one_plan():
    a, b = open_clip.SimpleTokenizer(context_length=77), open_clip.SimpleTokenizer(context_length=77)
    a(["warm its bpe cache"])  # a memo that differs between equal tokenizers is not part of the identity
    assert tokenizer_identity(a) == tokenizer_identity(b)
    assert text_plan(_lm(a), TEXTS) is text_plan(_lm(b), TEXTS)
    assert tokenizer_identity(open_clip.SimpleTokenizer(context_length=64)) != tokenizer_identity(a)
    assert tokenizer_identity(open_clip.SimpleTokenizer(context_length=77, clean="whitespace")) != tokenizer_identity(a)


@pytest.mark.parametrize("n", [1, 3])
def test_identity_is_computed_once_per_tokenizer(n, monkeypatch):
    import evalkit.tasks.text as text

    tok = open_clip.SimpleTokenizer(context_length=77)
    calls = []
    real = text._feed
    monkeypatch.setattr(text, "_feed", lambda h, v, depth: (v is tok and calls.append(1)) or real(h, v, depth))
    for _ in range(n):
        tokenizer_identity(tok)
    assert len(calls) == 1
