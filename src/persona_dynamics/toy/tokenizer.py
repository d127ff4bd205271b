"""The toy organism's tokenizer: a byte-level BPE with OLMo-2 Instruct's special tokens and chat
template, trained on the build's own text (tests and benchmarks use it for their tiny models too).
"""

from __future__ import annotations

from collections.abc import Iterable

from persona_dynamics.chat import OLMO2_CHAT_TEMPLATE, OLMO2_SPECIAL_TOKENS


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048, pre_tokenizer=None):
    """Train a byte-level BPE on `texts` and wrap it as an OLMo-2-style fast tokenizer.

    `pre_tokenizer` defaults to GPT-2-style byte-level splitting; tests pass OLMo-2's own split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=OLMO2_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    fast.chat_template = OLMO2_CHAT_TEMPLATE
    return fast
