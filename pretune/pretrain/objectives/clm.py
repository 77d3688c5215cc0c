"""GPT's causal LM: next-token loss over packed sequences, on a causal model.
"""

from __future__ import annotations

from pretune.model.heads import MLMHead
from pretune.pretrain.objectives.base import IGNORE, Objective, mlm_loss, pad_sequences, register


@register
class CausalLM(Objective):
    """Next-token prediction over packed sequences on a causal model: position t predicts token t+1. The "lm" head
    is the tied embedding decoder without bias (GPT-2's layout); statistics lm_loss, lm_accuracy, lm_perplexity."""

    name = "clm"
    causal = True

    def heads(self, cfg):
        return {"lm": MLMHead(cfg, transform=False, bias=False)}

    def collate(self, items, gen):
        batch = pad_sequences(items, self.specials.pad)
        del batch["word_starts"]
        labels = batch["input_ids"].clone()
        if "attention_mask" in batch:
            labels[~batch["attention_mask"]] = IGNORE
        batch["labels"] = labels
        return batch

    def loss(self, model, batch):
        hidden = model.body(batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
        return mlm_loss(model, hidden[:, :-1], batch["labels"][:, 1:], head="lm")
