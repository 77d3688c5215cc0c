"""Pretraining objectives: each turns token sequences into model inputs and targets, owns its heads and its loss.

    mlm       BERT's masked LM: 15% of tokens, 80% [MASK] / 10% random / 10% unchanged         (mlm.py)
    wwm       whole-word masking: words chosen until ~15% of tokens are covered, all pieces together (mlm.py)
    span      SpanBERT: spans of whole words + span boundary objective                        (span.py)
    mlm+nsp   BERT's MLM + next-sentence prediction on [CLS] A [SEP] B [SEP] pairs           (nsp.py)
    clm       GPT's causal LM: next-token loss over packed sequences, on a causal model     (clm.py)
    rtd       ELECTRA's replaced-token detection: a small generator fills masked positions, the model
              learns at every token whether it was replaced                                  (rtd.py)
    simcse    unsupervised SimCSE: two dropout views of each text, one mean-pooled vector pulled together,
              the batch's other texts pushed away; no head (for sentence-embedding checkpoints)  (contrastive.py)

The interface, the registry and the shared pieces are in base.py. Importing this package imports every objective
module, in the order above, so that each registers itself (the order of OBJECTIVES).
"""

# ruff: noqa: I001 - the objective modules are imported in registration order, not sorted
from pretune.pretrain.objectives.base import (
    IGNORE,
    OBJECTIVES,
    Objective,
    PretrainModel,
    Specials,
    Stats,
    SumCrossEntropy,
    build_objective,
    corrupt,
    mlm_loss,
    numpy_rng,
    pad_sequences,
    register,
    special_mask,
    token_loss,
    word_index,
)
from pretune.pretrain.objectives.mlm import MASK_OPTIONS, MaskedLM, WholeWordMLM
from pretune.pretrain.objectives.span import Span, SpanMLM, sample_spans, span_boundary_loss, span_length_distribution
from pretune.pretrain.objectives.nsp import MLMWithNSP, SentencePairs, pad_pairs
from pretune.pretrain.objectives.clm import CausalLM
from pretune.pretrain.objectives.rtd import ReplacedTokenDetection
from pretune.pretrain.objectives.contrastive import SimCSE

__all__ = [
    "IGNORE", "MASK_OPTIONS", "OBJECTIVES", "CausalLM", "MLMWithNSP", "MaskedLM", "Objective", "PretrainModel",
    "ReplacedTokenDetection",
    "SentencePairs", "SimCSE", "Span", "SpanMLM", "Specials", "Stats", "SumCrossEntropy", "WholeWordMLM",
    "build_objective",
    "corrupt", "mlm_loss", "numpy_rng", "pad_pairs", "pad_sequences", "register", "sample_spans",
    "span_boundary_loss", "span_length_distribution", "special_mask", "token_loss", "word_index",
]
